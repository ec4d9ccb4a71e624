"""Region queries: crops of each image embedded beside it (`embed.regions`) and searched against the whole images,
so that a photo pasted at half scale into another (a composite) or cropped to a third is a candidate even where the
two whole images' cosine is far below the verification band. The candidates are verified by local features as
borderline pairs are (dedup/search/verify_pairs.py); the cosine only proposes them.

Each crop is REGION_SIDE of the image's width and height, on a 3 x 3 grid (9 regions) or at its corners and centre
(5). Measured on the hard set's dev split in docs/quality.md."""

from __future__ import annotations

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


def region_candidates(
    regions: np.ndarray, embeddings: np.ndarray, threshold: float, per_row: int, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (a, b, cosine, region) where region `region` of image a reaches `threshold` against the whole image b
    (a != b): for each a, its `per_row` best partners by their best region. `regions`: (rows, R, dim); `embeddings`: (rows, dim),
    unit vectors. An exact inner-product search (faiss), quadratic in the rows."""
    import faiss

    rows, count, dim = regions.shape
    index = faiss.IndexFlatIP(dim)
    index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    k = min(rows, per_row + 1)
    found_a: list[np.ndarray] = [np.zeros(0, np.int64)]
    found_b: list[np.ndarray] = [np.zeros(0, np.int64)]
    found_s: list[np.ndarray] = [np.zeros(0, np.float32)]
    found_r: list[np.ndarray] = [np.zeros(0, np.int64)]
    for start in range(0, rows, chunk):
        block = np.ascontiguousarray(regions[start : start + chunk], dtype=np.float32).reshape(-1, dim)
        scores, hits = index.search(block, k)
        owner = np.repeat(np.arange(start, start + len(block) // count), count)
        a, region = np.repeat(owner, k), np.repeat(np.tile(np.arange(count), len(block) // count), k)
        b, s = hits.reshape(-1), scores.reshape(-1)
        keep = (b >= 0) & (b != a) & (s >= threshold)
        found_a.append(a[keep])
        found_b.append(b[keep])
        found_s.append(s[keep])
        found_r.append(region[keep])
    return best_partners(
        np.concatenate(found_a).astype(np.int64),
        np.concatenate(found_b).astype(np.int64),
        np.concatenate(found_s).astype(np.float32),
        np.concatenate(found_r).astype(np.int64),
        per_row,
    )


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
