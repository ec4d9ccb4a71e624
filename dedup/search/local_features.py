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


@dataclass
class Features:
    points: np.ndarray  # float32 (n, 2)
    descriptors: np.ndarray | None  # uint8 (n, 32)
    mirrored: Features | None = None  # the same image's mirror image: ORB's descriptors are not mirror-invariant


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
    return found


def _orb(pixels: np.ndarray) -> Features:
    keypoints, descriptors = _cv2().ORB_create(nfeatures=KEYPOINTS).detectAndCompute(pixels, None)
    return Features(np.array([keypoint.pt for keypoint in keypoints], dtype=np.float32).reshape(-1, 2), descriptors)


def inliers(first: Features, second: Features) -> int:
    """Matches consistent with one similarity transform (rotation, scale, shift): 0 when too few to fit."""
    cv2 = _cv2()
    if first.descriptors is None or second.descriptors is None or min(len(first.points), len(second.points)) < 8:
        return 0
    candidates = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(first.descriptors, second.descriptors, k=2)
    good = [m[0] for m in candidates if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
    if len(good) < 6:
        return 0
    source = first.points[[m.queryIdx for m in good]]
    target = second.points[[m.trainIdx for m in good]]
    _, mask = cv2.estimateAffinePartial2D(
        source, target, method=cv2.RANSAC, ransacReprojThreshold=REPROJECTION_PX, maxIters=500
    )
    return int(mask.sum()) if mask is not None else 0


def pair_inliers(
    a: np.ndarray,
    b: np.ndarray,
    features_of: dict[int, Features],
    threads: int = 2,
    enough: int | None = None,
    mirror: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """int32 (pairs,): inliers of each (a[i], b[i]), -1 where a row's image could not be read; and bool (pairs,):
    whether the mirror image was matched too. It is where a pair has fewer than `enough`, `mirror[i]` holds and
    the first image's mirror image is known; the larger count is kept. OpenCV releases the GIL, so threads share
    the matching."""
    from concurrent.futures import ThreadPoolExecutor

    try_mirror = np.ones(len(a), bool) if mirror is None else mirror

    def one(pair: tuple[int, int, bool]) -> tuple[int, bool]:
        x, y, mirrored = pair
        if x not in features_of or y not in features_of:
            return -1, False
        first, second = features_of[x], features_of[y]
        direct = inliers(first, second)
        if enough is None or direct >= enough or not mirrored or first.mirrored is None:
            return direct, False
        return max(direct, inliers(first.mirrored, second)), True

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(one, zip(a.tolist(), b.tolist(), try_mirror.tolist()), chunksize=256))
    counts = np.fromiter((count for count, _ in results), dtype=np.int32, count=len(a))
    return counts, np.fromiter((tried for _, tried in results), dtype=bool, count=len(a))


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
