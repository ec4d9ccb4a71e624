"""Borderline embedding pairs confirmed by local features: ORB keypoints matched with Lowe's ratio test, then a
similarity transform fitted by RANSAC; a pair is a copy when enough matches agree with one transform.

A crop, a resize or a rotation keeps hundreds of keypoints in place; two different photos that a descriptor
finds alike (same kind of scene) rarely share one geometry. So a pair whose cosine lies between
`verify_threshold` and `threshold` counts only when verified, and a low threshold keeps its recall without
chains of false merges. Measured (cost per pair, gain): docs/quality.md."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dedup.errors import SettingsError

MAX_SIDE = 320  # images are matched at most this large: keypoints enough, cost bounded
KEYPOINTS = 500
RATIO = 0.8  # Lowe's ratio test
REPROJECTION_PX = 5.0
# a transform that shrinks one image to under this share of its side is no copy: RANSAC's answer when many keypoints
# of a flat texture (snow, sand) match a few of the other's, collapsing the whole image onto them
SMALLEST_SCALE = 1 / 8
SMALL_SIDE = 128  # the gray image kept beside the keypoints, to compare a pair once aligned (search/relations.py)


@dataclass
class Features:
    points: np.ndarray  # float32 (n, 2)
    descriptors: np.ndarray | None  # uint8 (n, 32)
    mirrored: Features | None = None  # the same image's mirror image: ORB's descriptors are not mirror-invariant
    small: np.ndarray | None = None  # uint8 gray, longer side at most SMALL_SIDE
    small_scale: float = 1.0  # small's size over the size the points are in
    sharpness: float = 0.0  # variance of small's Laplacian


def _cv2():
    try:
        import cv2
    except ImportError as error:
        raise SettingsError(
            "find.verify_threshold needs OpenCV, which is not installed: pip install opencv-python-headless"
        ) from error
    return cv2


def features(image, mirrored: bool = False) -> Features:
    """ORB keypoints of a PIL image, on its gray levels, its longer side at most MAX_SIDE; with `mirrored`, those
    of its mirror image too, so a mirrored copy can be matched."""
    gray = image.convert("L")
    scale = MAX_SIDE / max(gray.size)
    if scale < 1:
        gray = gray.resize((max(1, round(gray.width * scale)), max(1, round(gray.height * scale))))
    pixels = np.asarray(gray)
    found = _orb(pixels)
    if mirrored:
        found.mirrored = _orb(np.ascontiguousarray(pixels[:, ::-1]))
    small_scale = min(1.0, SMALL_SIDE / max(gray.size))
    found.small = np.asarray(
        gray.resize((max(1, round(gray.width * small_scale)), max(1, round(gray.height * small_scale))))
    )
    found.small_scale = found.small.shape[1] / gray.width
    found.sharpness = float(_cv2().Laplacian(found.small.astype(np.float32), _cv2().CV_32F).var())
    return found


def crop_features(image, box: tuple[int, int, int, int], whole: Features, mirrored: bool = False) -> Features:
    """ORB keypoints of one region of a PIL image (`box` in its pixels), read at MAX_SIDE so the region gets the
    keypoints the whole image would spread over all of it; the points in `whole`'s coordinates (and those of the
    mirror image in the whole mirror image's), its small gray image and sharpness `whole`'s, so a pair aligned
    through the region is measured as the whole image (search/relations.py)."""
    gray = image.convert("L").crop(box)
    scale = MAX_SIDE / max(gray.size)
    gray = gray.resize((max(1, round(gray.width * scale)), max(1, round(gray.height * scale))))
    pixels = np.asarray(gray)
    to_whole = min(1.0, MAX_SIDE / max(image.size))  # the whole image's feature coordinates over its pixels
    left, top, right = box[0] * to_whole, box[1] * to_whole, box[2] * to_whole
    shrink = to_whole / scale
    found = _orb(pixels)
    found.points = found.points * shrink + np.array([left, top], np.float32)
    if mirrored:
        flipped = _orb(np.ascontiguousarray(pixels[:, ::-1]))
        width = round(image.width * to_whole) if to_whole < 1 else image.width
        flipped.points = flipped.points * shrink + np.array([width - right, top], np.float32)
        found.mirrored = flipped
    found.small, found.small_scale, found.sharpness = whole.small, whole.small_scale, whole.sharpness
    return found


def _orb(pixels: np.ndarray) -> Features:
    keypoints, descriptors = _cv2().ORB_create(nfeatures=KEYPOINTS).detectAndCompute(pixels, None)
    return Features(np.asarray(_cv2().KeyPoint_convert(keypoints), dtype=np.float32).reshape(-1, 2), descriptors)


def inliers(first: Features, second: Features) -> int:
    """Matches consistent with one similarity transform (rotation, scale, shift): 0 when too few to fit."""
    return alignment(first, second).inliers


@dataclass
class Alignment:
    inliers: int
    matrix: np.ndarray | None = None  # 2 x 3: the similarity transform from the first image's points to the second's
    source: np.ndarray | None = None  # float32 (inliers, 2): the inlier matches, in the first image
    target: np.ndarray | None = None  # ... and in the second


NOT_ALIGNED = Alignment(0)


def alignment(first: Features, second: Features, least: int = 6) -> Alignment:
    """The similarity transform (RANSAC) that maps the most matches of the first image's keypoints onto the
    second's, with its inlier matches; NOT_ALIGNED without fitting one where fewer than `least` keypoints match
    (its inliers are among them: a caller that needs `least` inliers is told no sooner)."""
    cv2 = _cv2()
    if first.descriptors is None or second.descriptors is None or min(len(first.points), len(second.points)) < 8:
        return NOT_ALIGNED
    query, train = ratio_matches(first.descriptors, second.descriptors)
    if len(query) < max(6, least):
        return NOT_ALIGNED
    source, target = first.points[query], second.points[train]
    matrix, mask = cv2.estimateAffinePartial2D(
        source, target, method=cv2.RANSAC, ransacReprojThreshold=REPROJECTION_PX, maxIters=500
    )
    if mask is None or matrix is None:
        return NOT_ALIGNED
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if not SMALLEST_SCALE <= scale <= 1 / SMALLEST_SCALE:
        return NOT_ALIGNED
    kept = mask.ravel().astype(bool)
    return Alignment(int(kept.sum()), matrix, source[kept], target[kept])


def ratio_matches(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows of `first`, rows of `second`): each descriptor of the first matched to its nearest in the second
    where that one is clearly nearer than the next (Lowe's ratio test), by Hamming distance. faiss's binary
    search, single-threaded (the pairs are matched in threads already): about 3 times OpenCV's brute-force
    matcher on ORB's 500 descriptors."""
    import faiss

    if len(second) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    index = faiss.IndexBinaryFlat(second.shape[1] * 8)
    index.add(np.ascontiguousarray(second))
    distance, nearest = index.search(np.ascontiguousarray(first), 2)
    good = distance[:, 0] < RATIO * distance[:, 1]
    return np.flatnonzero(good), nearest[good, 0].astype(np.int64)


def match_in_one_thread() -> None:
    """For a thread that matches pairs beside others: faiss's OpenMP threads, which each thread sets for itself,
    at one (the threads already share the cores)."""
    import faiss

    faiss.omp_set_num_threads(1)


def rank_in_rows(a: np.ndarray, b: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """Each pair's rank among the pairs of either of its rows, by similarity (0: the most similar of one)."""
    order = np.argsort(-similarity, kind="stable")
    seen: dict[int, int] = {}
    rank = np.empty(len(a), np.int64)
    for index in order.tolist():
        x, y = int(a[index]), int(b[index])
        rank[index] = min(seen.get(x, 0), seen.get(y, 0))
        seen[x], seen[y] = seen.get(x, 0) + 1, seen.get(y, 0) + 1
    return rank


def strongest_per_row(a: np.ndarray, b: np.ndarray, similarity: np.ndarray, per_row: int) -> np.ndarray:
    """Indices of the pairs to verify: each row's `per_row` most similar borderline partners (either side),
    which bounds the cost on rows with many."""
    order = np.argsort(-similarity, kind="stable")
    taken: dict[int, int] = {}
    chosen = []
    for index in order.tolist():
        x, y = int(a[index]), int(b[index])
        if taken.get(x, 0) < per_row or taken.get(y, 0) < per_row:
            chosen.append(index)
            taken[x] = taken.get(x, 0) + 1
            taken[y] = taken.get(y, 0) + 1
    return np.asarray(sorted(chosen), dtype=np.int64)
