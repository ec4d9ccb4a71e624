"""Region queries: crops of each image embedded beside it (`embed.regions`), with its mirror image, and searched
against the whole images both ways (crops asking for whole images; whole images and their mirrors asking for crops),
so that a photo pasted at half scale into another (a composite) or cropped to a third is a candidate even where the
two whole images' cosine is far below the verification band. The candidates are verified by local features as
borderline pairs are (dedup/search/verify_pairs.py); the cosine only proposes them.

Each crop is REGION_SIDE of the image's width and height, on a 3 x 3 grid (9 regions) or at its corners and centre
(5). Measured on the hard set's dev split in docs/quality.md."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image

REGION_SIDE = 0.55
# a pair a region proposed counts when its alignment covers at least this share of one of the two images: a composite
# holds its pasted photo whole, a crop lies whole inside its photo; chance matches of two unrelated photos (repeated
# texture, read large in a region) fit no overlap (docs/quality.md)
REGION_COVERED = 0.5
_GRID = (0.0, (1 - REGION_SIDE) / 2, 1 - REGION_SIDE)
_CORNERS_AND_CENTRE = ((0, 0), (0, 2), (1, 1), (2, 0), (2, 2))


def region_boxes(width: int, height: int, count: int) -> list[tuple[int, int, int, int]]:
    """The crop boxes (left, top, right, bottom) of `count` regions of an image of this size."""
    if count not in (5, 9):
        raise ValueError(f"regions are 5 or 9, not {count}")
    cells = [(row, column) for row in range(3) for column in range(3)] if count == 9 else _CORNERS_AND_CENTRE
    boxes = []
    for row, column in cells:
        left, top = _GRID[column] * width, _GRID[row] * height
        boxes.append((round(left), round(top), round(left + REGION_SIDE * width), round(top + REGION_SIDE * height)))
    return boxes


def region_crops(image: Image.Image, count: int) -> list[Image.Image]:
    return [image.crop(box) for box in region_boxes(image.width, image.height, count)]


def region_views(image: Image.Image, count: int) -> list[Image.Image]:
    """What embed.regions embeds beside an image: its `count` crops, then the whole image mirrored."""
    return [*region_crops(image, count), image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]


def region_candidates(
    regions: np.ndarray,
    embeddings: np.ndarray,
    threshold: float,
    per_row: int,
    mirrors: np.ndarray | None = None,
    chunk: int = 4096,
    same: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (a, b, cosine, region) where region `region` of image a reaches `threshold` against the whole image b
    (a != b), searched both ways: each a's `per_row` best whole images by their best region, and each b's `per_row`
    best region owners. The second way matters where a photo has many copies: its own few partners go to the copies
    closest to it, and a heavily edited copy finds its photo only by asking itself. `regions`: (rows, R, dim);
    `embeddings`: (rows, dim), unit vectors; `mirrors`: each whole image's mirror image, asked as b is (a mirrored crop
    of a photo then finds the photo's region, with `per_row` partners of its own). Exact inner-product searches
    (faiss), quadratic in the rows. With `same` False the whole images (and `mirrors`) are another set's: a is a row
    of `regions`, b of `embeddings`, and no pair is a self-pair."""
    found = [best_partners(*_regions_against_wholes(regions, embeddings, threshold, per_row, chunk, same), per_row)]
    for wholes in (embeddings, mirrors):
        if wholes is not None:
            b, a, score, region = best_partners(
                *_wholes_against_regions(regions, wholes, threshold, per_row, chunk, same), per_row
            )
            found.append((a, b, score, region))
    a, b, score, region = (np.concatenate(column) for column in zip(*found))
    return a, b, score, region


class RowSet(NamedTuple):
    """One side of a search between two sets of images: their crops' vectors (rows, R, dim), whole images' (rows,
    dim) and mirror images' (or None), and the number its first row has among the pairs returned."""

    regions: np.ndarray
    wholes: np.ndarray
    mirrors: np.ndarray | None
    offset: int


def candidates_between(
    first: RowSet, second: RowSet, threshold: float, per_row: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """region_candidates across two sets, both ways: each set's crops against the other's whole images and their
    mirror images, (a, b, cosine, region of a) with a's region; a row paired with itself (where the sets share rows)
    left out."""
    parts = []
    for own, other in ((first, second), (second, first)):
        a, b, score, region = region_candidates(
            own.regions, other.wholes, threshold, per_row, other.mirrors, same=False
        )
        parts.append((a + own.offset, b + other.offset, score, region))
    a, b, score, region = (np.concatenate(column) for column in zip(*parts))
    apart = a != b
    return a[apart], b[apart], score[apart], region[apart]


def _regions_against_wholes(
    regions: np.ndarray, embeddings: np.ndarray, threshold: float, per_row: int, chunk: int, same: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, cosine, region of a): each region's `per_row` + 1 nearest whole images (`per_row` where the wholes are
    another set's: `same` False)."""
    import faiss

    rows, count, dim = regions.shape
    index = faiss.IndexFlatIP(dim)
    index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    k = min(len(embeddings), per_row + int(same))
    found = _Found(same)
    for start in range(0, rows, chunk):
        block = np.ascontiguousarray(regions[start : start + chunk], dtype=np.float32).reshape(-1, dim)
        scores, hits = index.search(block, k)
        owner = np.repeat(np.arange(start, start + len(block) // count), count)
        region = np.repeat(np.tile(np.arange(count), len(block) // count), k)
        found.add(np.repeat(owner, k), hits.reshape(-1), scores.reshape(-1), region, threshold)
    return found.arrays()


def _wholes_against_regions(
    regions: np.ndarray, wholes: np.ndarray, threshold: float, per_row: int, chunk: int, same: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(b, a, cosine, region of a): each whole image's nearest regions, enough of them to name `per_row` owners
    besides itself (an owner holds at most R of them)."""
    import faiss

    rows, count, dim = regions.shape
    queries = np.ascontiguousarray(wholes, dtype=np.float32)
    found = _Found(same)
    for start in range(0, rows, chunk):
        index = faiss.IndexFlatIP(dim)
        index.add(np.ascontiguousarray(regions[start : start + chunk], dtype=np.float32).reshape(-1, dim))
        scores, hits = index.search(queries, min(index.ntotal, (per_row + 1) * count))
        hits = hits.reshape(-1)
        owner = np.where(hits >= 0, start + hits // count, -1)
        found.add(
            np.repeat(np.arange(len(queries)), scores.shape[1]), owner, scores.reshape(-1), hits % count, threshold
        )
    return found.arrays()


class _Found:
    """Search hits gathered block by block: (query row, hit row, cosine, region), self-hits (within one set: `same`)
    and those under the threshold left out."""

    def __init__(self, same: bool = True) -> None:
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.same = same

    def add(self, query: np.ndarray, hit: np.ndarray, score: np.ndarray, region: np.ndarray, threshold: float) -> None:
        keep = (hit >= 0) & (score >= threshold)
        if self.same:
            keep &= hit != query
        self.parts.append((query[keep], hit[keep], score[keep], region[keep]))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if not self.parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
        query, hit, score, region = (np.concatenate(column) for column in zip(*self.parts))
        return query.astype(np.int64), hit.astype(np.int64), score.astype(np.float32), region.astype(np.int64)


def best_partners(
    a: np.ndarray, b: np.ndarray, score: np.ndarray, region: np.ndarray, per_row: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each (a, b) once with its best score (and the region that scored it), then each a's `per_row` best
    partners."""
    order = np.lexsort((-score, b, a))
    a, b, score, region = a[order], b[order], score[order], region[order]
    first = np.ones(len(a), dtype=bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    a, b, score, region = a[first], b[first], score[first], region[first]
    order = np.lexsort((-score, a))
    a, b, score, region = a[order], b[order], score[order], region[order]
    starts = np.searchsorted(a, a, side="left")
    keep = (np.arange(len(a)) - starts) < per_row
    return a[keep], b[keep], score[keep], region[keep]


def covers_one(evidence: list, measured: bool) -> np.ndarray:
    """bool per pair: its aligned overlap covers REGION_COVERED of one of the images (all True when the overlap was
    not measured: find.relations off)."""
    if not measured:
        return np.ones(len(evidence), bool)
    covered = [max(one.coverage_a, one.coverage_b) for one in evidence]
    return np.nan_to_num(np.asarray(covered, np.float64), nan=0.0) >= REGION_COVERED
