"""PDQ (Meta's 256-bit perceptual hash) of an image and of its seven flips and quarter turns, in numpy.

Meta's reference (pdqhashing.cpp) blurs the whole luma image with two passes of 1-D box filters along each axis
(Jarosz), keeps 64 x 64 samples of it, and takes 16 x 16 coefficients of their DCT. Every step is linear, and each
of the 64 x 64 samples is a weighted sum of a few pixels (2 x window - 1 a side): those weights, found once for
each side length, make an image's hash a gather of the pixels the samples read instead of four passes over every
pixel. The hashes equal pdqhash's (the reference's Python binding) up to float rounding:
a coefficient that lies on the median may fall on the other side (docs/quality.md measures how often).
"""

from __future__ import annotations

import functools

import numpy as np

LUMA = np.array([0.299, 0.587, 0.114])  # the reference's luma_from_{R,G,B}_coeff
SAMPLES = 64  # the blurred image's samples a side, whose DCT is taken
WINDOW_DIVISOR = 128  # the reference's PDQ_JAROSZ_WINDOW_SIZE_DIVISOR: each of two passes is half a sample wide
PASSES = 2
SMALLEST_SIDE = 5  # the reference's MIN_HASHABLE_DIM: a smaller image hashes to zeros


def _dihedral_signs() -> np.ndarray:
    i, j = np.indices((16, 16))
    ones = np.ones((16, 16), np.float32)
    odd_i, odd_j = np.where(i % 2, 1.0, -1.0), np.where(j % 2, 1.0, -1.0)
    checker = np.where((i + j) % 2, -1.0, 1.0)
    return np.stack([ones, odd_j, checker, odd_i, odd_i, odd_j, ones, checker]).astype(np.float32)


# A flip or quarter turn of the image changes the signs of the 16 x 16 DCT coefficients and may transpose them
# (pdqDihedralHash256esFromFloatLuma): one DCT gives all eight hashes, in pdqhash.compute_dihedral's order.
DIHEDRAL_SIGNS = _dihedral_signs()
DIHEDRAL_TRANSPOSED = np.array([False, True, False, True, False, False, True, True])


def _box_after(rows: np.ndarray, window: int) -> np.ndarray:
    """rows . F, where F (n x n) is the reference's box1DFloat along a line of n values: output o is the mean of
    inputs [o - (window - half), o + half - 1], cut at the ends (half = (window + 2) // 2)."""
    n = rows.shape[1]
    half = (window + 2) // 2
    before, after = window - half, half - 1
    outputs = np.arange(n)
    counts = np.minimum(n - 1, outputs + after) - np.maximum(0, outputs - before) + 1
    weighted = rows / counts
    # (rows . F)[:, j] sums weighted[:, o] over the outputs o whose window holds input j: o in [j - after, j + before]
    summed = np.concatenate([np.zeros((len(rows), 1)), np.cumsum(weighted, axis=1)], axis=1)
    lo, hi = np.maximum(0, outputs - after), np.minimum(n - 1, outputs + before)
    return summed[:, hi + 1] - summed[:, lo]


@functools.lru_cache(maxsize=64)
def _taps(side: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, weights), each (64, taps): the pixels of a line of `side` that each of the 64 samples reads after
    the reference's blur (a contiguous run; indices past it carry weight 0), and their weights."""
    window = (side + WINDOW_DIVISOR - 1) // WINDOW_DIVISOR
    sampled = np.floor((np.arange(SAMPLES) + 0.5) * side / SAMPLES).astype(np.int64)  # decimateFloat
    blurred = np.eye(side)[sampled]  # S . F . F: the samples' rows of the blur, F applied PASSES times
    for _ in range(PASSES):
        blurred = _box_after(blurred, window)
    first = np.argmax(blurred > 0, axis=1)
    taps = int((blurred > 0).sum(axis=1).max())
    pixels = np.minimum(first[:, None] + np.arange(taps), side - 1)
    weights = np.where(first[:, None] + np.arange(taps) < side, np.take_along_axis(blurred, pixels, axis=1), 0.0)
    return pixels, weights


def _dct_matrix() -> np.ndarray:
    frequency, position = np.indices((16, SAMPLES))
    return np.sqrt(2 / SAMPLES) * np.cos(np.pi / 2 / SAMPLES * (frequency + 1) * (2 * position + 1))


DCT = _dct_matrix()  # the reference's dct64To16: coefficients 1-16 (not the mean) of 64 samples


def coefficients(rgb: np.ndarray) -> np.ndarray:
    """float64 (16, 16): the reference's buffer16x16 of an RGB uint8 image (H, W, 3). Only the pixels the 64 x 64
    samples read are touched, by elementwise products (a matrix product would start BLAS threads in every
    decoding thread)."""
    height, width = rgb.shape[:2]
    row_pixels, row_weights = _taps(height)
    rows = (rgb[row_pixels] * row_weights[:, :, None, None]).sum(axis=1)  # (64, W, 3): the blurred, sampled rows
    luma = rows[..., 0] * LUMA[0] + rows[..., 1] * LUMA[1] + rows[..., 2] * LUMA[2]
    column_pixels, column_weights = _taps(width)
    samples = (luma[:, column_pixels] * column_weights).sum(axis=2)  # (64, 64)
    return DCT @ samples @ DCT.T


def dihedral_hashes(rgb: np.ndarray) -> np.ndarray:
    """uint8 (8, 32): the PDQ hashes of the image and of its flips and quarter turns, the image's own first, each
    as pdqhash packs them (bit 255 first); zeros for an image under SMALLEST_SIDE pixels a side."""
    if min(rgb.shape[:2]) < SMALLEST_SIDE:
        return np.zeros((8, 32), np.uint8)
    variants = coefficients(rgb)[None] * DIHEDRAL_SIGNS
    variants[DIHEDRAL_TRANSPOSED] = variants[DIHEDRAL_TRANSPOSED].transpose(0, 2, 1)
    flat = variants.reshape(8, 256)
    medians = np.partition(flat, 127, axis=1)[:, 127:128]  # the reference's median: the 128th smallest (Torben's)
    return np.packbits((flat > medians)[:, ::-1], axis=1)
