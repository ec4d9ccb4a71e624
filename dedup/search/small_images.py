"""Copies among thumbnails (CIFAR-10's 32 x 32 photos, favicons, sprites), confirmed by their pixels.

At 32 px ORB finds a handful of keypoints, too few for verification to fit a geometry, and the copy-detection
model reads an upscaled blur: a thumbnail's copy scores a cosine of 0.5-0.75 where a photo's scores 0.85. So where
both images of a borderline pair are this small, the pair is compared densely instead: the structure of each
(the Laplacian of its gray levels, lightly blurred) correlated at every shift of a few pixels, the first image and
its mirror image, each also against the other's centre enlarged (a tighter crop of the same photo); the best
correlation is the pair's `dense` evidence. A recolouring, a JPEG pass, a shift or a crop keep the structure in
place; two photos of one kind of object do not share it edge for edge. A flat photo (a ship on a calm sea, a plane
in the sky) has little structure to agree on, so it must agree more closely.

Thresholds and what they were chosen and measured on (CIFAR-10 test against train, with the ciFAIR study's
duplicate list and pairs labelled by eye): docs/quality.md, "Small images".
"""

from __future__ import annotations

import numpy as np

SMALL_SIDE = 64  # images at most this long on either side are compared densely
SHIFT = 0.1  # shifts tried, as a share of the side (3 px at 32)
ZOOMS = (1.15, 1.3)  # ... and these enlargements of the centre of either image: a tighter crop of one photo
AGREE = 0.65  # structure correlation for a copy ...
FLAT_TEXTURE = 10.0  # ... of images whose structure (mean |Laplacian|, gray levels) is at least this
AGREE_FLAT = 0.8  # ... and of flatter ones
LEAST_COSINE = 0.5  # below, a pair of thumbnails is not compared: the model's word that they differ


def is_small(gray: np.ndarray | None, scale: float) -> bool:
    """Whether an image (its gray levels as local_features keeps them, at `scale` of the original) is a thumbnail."""
    return gray is not None and scale == 1.0 and max(gray.shape) <= SMALL_SIDE


def structure(gray: np.ndarray) -> np.ndarray:
    import cv2

    blurred = cv2.GaussianBlur(gray.astype(np.float32), (3, 3), 0.7)
    return cv2.Laplacian(blurred, cv2.CV_32F)


def texture(gray: np.ndarray) -> float:
    """Mean absolute structure: how much an image has to agree on."""
    return float(np.abs(structure(gray)).mean())


def _zoomed(gray: np.ndarray, scale: float) -> np.ndarray:
    """The centre of `gray` enlarged `scale` times, at its own size: what a tighter crop of the photo looks like."""
    import cv2

    height, width = gray.shape
    larger = cv2.resize(gray, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_LINEAR)
    top, left = (larger.shape[0] - height) // 2, (larger.shape[1] - width) // 2
    return larger[top : top + height, left : left + width]


def _best_shift(first: np.ndarray, target: np.ndarray, margin: int) -> tuple[float, bool]:
    """The best correlation of `first`'s structure (and its mirror image's), less a `margin` all round, slid over the
    `target` structure."""
    import cv2

    best, mirrored = -1.0, False
    for flipped in (False, True):
        source = structure(np.ascontiguousarray(first[:, ::-1]) if flipped else first)
        template = np.ascontiguousarray(source[margin:-margin, margin:-margin])
        score = float(cv2.matchTemplate(target, template, cv2.TM_CCOEFF_NORMED).max())
        if score > best:
            best, mirrored = score, flipped
    return best, mirrored


def agreement(first: np.ndarray, second: np.ndarray) -> tuple[float, bool]:
    """(best normalised correlation of the two images' structure over small shifts and ZOOMS of either, whether the
    first's mirror image gave it). The images are brought to the smaller one's size first."""
    import cv2

    height, width = min(first.shape[0], second.shape[0]), min(first.shape[1], second.shape[1])
    if first.shape != (height, width):
        first = cv2.resize(first, (width, height), interpolation=cv2.INTER_AREA)
    if second.shape != (height, width):
        second = cv2.resize(second, (width, height), interpolation=cv2.INTER_AREA)
    margin = max(1, round(SHIFT * min(height, width)))
    if min(height, width) <= 2 * margin + 2:
        return float("nan"), False
    target = structure(second)
    best = _best_shift(first, target, margin)
    for scale in ZOOMS:
        if best[0] >= AGREE_FLAT:
            break
        zoomed_target = structure(_zoomed(second, scale))
        best = max(best, _best_shift(_zoomed(first, scale), target, margin), _best_shift(first, zoomed_target, margin))
    return best


def confirms(dense: float, first: np.ndarray, second: np.ndarray) -> bool:
    """Whether a pair of thumbnails whose structures correlate `dense` is one picture."""
    if not np.isfinite(dense) or dense < AGREE:
        return False
    return dense >= AGREE_FLAT or min(texture(first), texture(second)) >= FLAT_TEXTURE
