"""What kind of match a found pair is: the same bytes (`exact`), one capture edited (`copy`), a region of one is the
other (`partial`), the same place at another moment or with another subject (`same_scene`), or alike with no
geometry in common (`similar`).

Local features align the pair (the similarity transform verification fits). Three things then tell one capture
from two: how exactly the matched keypoints obey one transform (an edit moves every point by the same
geometry; a second shot, from a hand-held camera a moment later, leaves each point off by its own parallax),
how much of the aligned overlap changed, cell by cell, once each image's tones are ranked (a recolouring, a
JPEG pass or a blur barely move the ranks; a subject who moved does), and whether both are about as sharp (two
shots of one camera are; a blurred or recompressed copy, whose keypoints drift with the edit, is not). A meme
caption changes cells too, but its keypoints sit exactly where the transform puts them. Thresholds, what they
were measured on and where the rule fails (a crop stretched, mirrored and captioned at once; two copies edited
differently): docs/relations.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from dedup.search import local_features, small_images
from dedup.search.local_features import Alignment, Features

UNKNOWN = "unknown"  # a pair not examined: found before relations existed, past the per-row budget, unreadable

ALIGNED = 15  # inliers enough to measure the overlap (verification asks more before it calls a pair a copy)
COVERED = 0.8  # an image this much inside the aligned overlap is all in it
PARTIAL_BELOW = 0.6  # ... and the other, this little inside, holds it as a region
REGION_AT_LEAST = 0.1  # an overlap smaller than this share of both is no region of either
GRID = 6  # the overlap is compared in GRID x GRID cells
CHANGED_CELL = 0.15  # a cell whose tone ranks moved this much on average changed (a subject moved, an overlay)
MISFIT_PX = 0.5  # median inlier distance from the transform, over its scale: above, points move on their own
EQUALLY_SHARP = 0.5  # two shots of one camera a moment apart are about as sharp; a blurred, recompressed or
# captioned copy is not, and its keypoints drift with the edit, not with parallax


@dataclass(frozen=True)
class Evidence:
    inliers: int  # matches consistent with one similarity transform; -1: an image could not be read
    mirror_tried: bool  # the first image's mirror image was matched too (the direct match was weak)
    mirrored: bool  # ... and matched better: the transform is the mirror image's
    coverage_a: float  # share of the first image inside the aligned overlap; NaN: not aligned (too few inliers)
    coverage_b: float
    changed: float  # the most changed cell of the overlap: mean move of its tone ranks, 0-1; NaN: not aligned
    misfit: float  # median distance of the inliers from the transform, in pixels over its scale; NaN: not aligned
    sharpness_ratio: float  # the blurrier image's sharpness over the sharper's, 0-1
    dense: float = float("nan")  # two thumbnails' structure correlation (search/small_images.py); NaN: not compared


UNREAD = Evidence(-1, False, False, float("nan"), float("nan"), float("nan"), float("nan"), float("nan"))


def evidence(
    first: Features, second: Features, enough: int, try_mirror: bool = True, measure: bool = True, least: int = 0
) -> Evidence:
    """Align the pair and, where it has ALIGNED inliers, measure the overlap on the `small` gray images that
    local_features.features keeps. The first image's mirror image (where known, and `try_mirror`) is matched
    too when the direct match has fewer than `enough`; the better of the two is kept. Without `measure`, only
    the inliers (verification alone, find.relations off). `least`: fewer inliers than this are of no use to the
    caller, and a match with fewer keypoints matched is not fitted (its inliers read 0)."""
    aligned, tried, mirrored = best_alignment(first, second, enough, try_mirror, least)
    sharpness_ratio = min(first.sharpness, second.sharpness) / max(first.sharpness, second.sharpness, 1e-6)
    if (
        not measure
        or aligned.inliers < ALIGNED
        or aligned.matrix is None
        or first.small is None
        or second.small is None
    ):
        nan = float("nan")
        return Evidence(aligned.inliers, tried, mirrored, nan, nan, nan, nan, sharpness_ratio)
    small_first = np.ascontiguousarray(first.small[:, ::-1]) if mirrored else first.small
    coverage_a, coverage_b, changed = overlap(
        small_first, first.small_scale, second.small, second.small_scale, fitted_affine(aligned)
    )
    return Evidence(aligned.inliers, tried, mirrored, coverage_a, coverage_b, changed, misfit(aligned), sharpness_ratio)


def best_alignment(
    first: Features, second: Features, enough: int, try_mirror: bool = True, least: int = 0
) -> tuple[Alignment, bool, bool]:
    """The pair's alignment, and whether the first image's mirror image was tried and kept: tried (where known, and
    `try_mirror`) when the direct match has fewer than `enough` inliers, kept when it has more. `least`: see
    evidence."""
    aligned = local_features.alignment(first, second, least)
    if not (try_mirror and first.mirrored is not None and aligned.inliers < enough):
        return aligned, False, False
    through_mirror = local_features.alignment(first.mirrored, second, least)
    if through_mirror.inliers > aligned.inliers:
        return through_mirror, True, True
    return aligned, True, False


COPY_EMBEDDERS = ("copydetect",)  # embedders trained to find copies: their threshold is a copy's


def copy_signals(embedder: object) -> frozenset[str]:
    """The signals whose pairs are copies without geometry: the hashes, and the embedding threshold of a
    copy-detection embedder (a CLIP threshold finds alike pictures: no more than `similar`). `embedder`: the
    store's embed.json entry."""
    name = embedder.get("embedder") if isinstance(embedder, dict) else embedder
    return frozenset({"phash", "pdq"} | ({"embedding"} if name in COPY_EMBEDDERS else set()))


def fitted_affine(aligned: Alignment) -> np.ndarray:
    """The affine transform (2 x 3) that fits the inliers best: a stretched copy's overlap then lines up too."""
    assert aligned.source is not None and aligned.target is not None and aligned.matrix is not None
    if len(aligned.source) < 6:
        return aligned.matrix
    design = np.hstack([aligned.source, np.ones((len(aligned.source), 1), np.float32)]).astype(np.float64)
    solution, *_ = np.linalg.lstsq(design, aligned.target.astype(np.float64), rcond=None)
    affine = solution.T
    similar_area = abs(np.linalg.det(aligned.matrix[:, :2]))
    if not np.isfinite(affine).all() or not 0.5 < abs(np.linalg.det(affine[:, :2])) / max(similar_area, 1e-9) < 2:
        return aligned.matrix  # points nearly on a line: the affine fit is not to be trusted
    return affine


def misfit(aligned: Alignment) -> float:
    """How far the inliers lie from the similarity transform (median, pixels of the second image) over its scale,
    so that an enlarged copy's keypoint noise does not count as motion."""
    assert aligned.source is not None and aligned.target is not None and aligned.matrix is not None
    matrix = aligned.matrix
    placed = aligned.source @ matrix[:, :2].T + matrix[:, 2]
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    return float(np.median(np.linalg.norm(placed - aligned.target, axis=1)) / max(1.0, scale))


def pair_evidence(
    a: np.ndarray,
    b: np.ndarray,
    features_of: dict[int, Features],
    enough: int,
    threads: int = 2,
    mirror: np.ndarray | None = None,
    measure: bool = True,
    least: int = 0,
) -> list[Evidence]:
    """The evidence of each pair (a[i], b[i]) of rows whose features are in `features_of` (UNREAD where a row's
    are not); the mirror image is tried where `mirror[i]` (every pair by default). OpenCV releases the GIL, so
    threads share the matching. `least`: see evidence (verification, which keeps only pairs with `enough`)."""
    from concurrent.futures import ThreadPoolExecutor

    try_mirror = np.ones(len(a), bool) if mirror is None else mirror

    def one(pair: tuple[int, int, bool]) -> Evidence:
        x, y, mirrored = pair
        if x not in features_of or y not in features_of:
            return UNREAD
        return evidence(features_of[x], features_of[y], enough, mirrored, measure, least)

    with ThreadPoolExecutor(max_workers=threads, initializer=local_features.match_in_one_thread) as pool:
        return list(pool.map(one, zip(a.tolist(), b.tolist(), try_mirror.tolist()), chunksize=256))


def overlap(
    first: np.ndarray, first_scale: float, second: np.ndarray, second_scale: float, matrix: np.ndarray
) -> tuple[float, float, float]:
    """(coverage of the first, coverage of the second, most changed cell) of two small gray images, `matrix`
    mapping the first's feature coordinates to the second's (each small image is its features' image times its
    scale)."""
    import cv2

    scaled = matrix.astype(np.float64).copy()
    scaled[:, :2] *= second_scale / first_scale
    scaled[:, 2] *= second_scale
    height, width = second.shape
    area_scale = abs(np.linalg.det(scaled[:, :2]))
    if not np.isfinite(scaled).all() or not 1e-3 < area_scale < 1e3:  # a degenerate fit (OpenCV crashes on some)
        return 0.0, 0.0, float("nan")
    inside = cv2.warpAffine(np.ones(first.shape, np.uint8), scaled, (width, height), flags=cv2.INTER_NEAREST) > 0
    overlap_pixels = int(inside.sum())
    if overlap_pixels < 16:
        return 0.0, 0.0, float("nan")
    coverage_second = overlap_pixels / inside.size
    coverage_first = min(1.0, float(overlap_pixels / area_scale / first.size))
    warped = cv2.warpAffine(first.astype(np.float32), scaled, (width, height), flags=cv2.INTER_LINEAR)
    core = cv2.erode(inside.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0  # the edge interpolates with black
    if core.sum() < 16:
        core = inside
    moved = np.zeros((height, width), np.float64)
    moved[core] = np.abs(
        tone_ranks(cv2.GaussianBlur(warped, (0, 0), 1.0)[core])
        - tone_ranks(cv2.GaussianBlur(second.astype(np.float32), (0, 0), 1.0)[core])
    )
    return coverage_first, coverage_second, most_changed_cell(moved, core)


def most_changed_cell(moved: np.ndarray, core: np.ndarray) -> float:
    """The largest mean of `moved` over the cells of a GRID x GRID split that lie mostly inside `core`."""
    import cv2

    def cell_means(values: np.ndarray) -> np.ndarray:
        return cv2.resize(values.astype(np.float32), (GRID, GRID), interpolation=cv2.INTER_AREA)

    inside = cell_means(core)
    usable = inside > 0.5
    if not usable.any():
        return float(moved[core].mean())
    return float((cell_means(moved * core) / np.maximum(inside, 1e-6))[usable].max())


def tone_ranks(values: np.ndarray) -> np.ndarray:
    """Each value's rank among `values` (gray levels, rounded to whole levels), in [0, 1]; ties share their mean
    rank. A histogram's running sum: no sort."""
    levels = np.clip(np.rint(values), 0, 255).astype(np.int64)
    counts = np.bincount(levels, minlength=256)
    below = np.cumsum(counts) - counts
    return ((below + (counts - 1) / 2) / max(1, len(values) - 1))[levels]


def decide(found: Evidence, copy_signal: bool) -> str:
    """The relation of a pair whose bytes differ, from its evidence (measured only where it aligned).
    `copy_signal`: the pair was found by a signal that alone says one capture (a perceptual hash, a
    copy-detection embedding at its threshold); without geometry it is then a copy on that signal's word,
    otherwise only `similar`."""
    if found.inliers < 0:
        return UNKNOWN
    if np.isnan(found.changed) and found.dense >= small_images.AGREE:
        return "copy"
    if np.isnan(found.changed):
        return "copy" if copy_signal else "similar"
    if found.changed > CHANGED_CELL and found.misfit > MISFIT_PX and found.sharpness_ratio > EQUALLY_SHARP:
        return "same_scene"
    low, high = sorted((found.coverage_a, found.coverage_b))
    if high >= COVERED and REGION_AT_LEAST <= low < PARTIAL_BELOW:
        return "partial"
    if low < REGION_AT_LEAST:
        return "similar"  # the transform puts a sliver of one on the other: no shared capture to speak of
    return "copy"


EVIDENCE_COLUMNS = ("coverage_a", "coverage_b", "changed", "misfit", "sharpness_ratio", "dense")


def with_relations(pairs: pa.Table) -> pa.Table:
    """pairs.parquet as this version writes it: a table from before relations existed gets them, `exact` for its
    exact pairs (the same bytes need no look) and `unknown` for the others, never guessed; NaN evidence. Evidence
    columns added since a table was written (`dense`) are NaN in it."""
    rows = len(pairs)
    if "relation" in pairs.column_names:
        for name in EVIDENCE_COLUMNS:
            if name not in pairs.column_names:
                pairs = pairs.append_column(name, pa.array(np.full(rows, np.nan, np.float32)))
        return pairs
    exact = pa.array([signal == "exact" for signal in pairs["signal"].to_pylist()], pa.bool_())
    for name in EVIDENCE_COLUMNS:
        pairs = pairs.append_column(name, pa.array(np.full(rows, np.nan, np.float32)))
    pairs = pairs.append_column("mirrored", pa.array(np.zeros(rows, bool)))
    relation = [("exact" if is_exact else UNKNOWN) for is_exact in exact.to_pylist()]
    return pairs.append_column("relation", pa.array(relation, pa.string()))
