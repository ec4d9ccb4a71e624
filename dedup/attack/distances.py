"""Distances of Carlini et al. 2023, on images as float arrays in [0, 1], shape (..., H, W, C) or (..., C, H, W).

- normalised l2: ||a - b||_2 / sqrt(d), d the number of values;
- tiled l2: the image cut into a grid of tiles, the score the worst (largest) tile's normalised l2 (the
  paper: 16 tiles of 128 px at 512 px; a generation counts as a copy only if every tile is close);
- relative ratio (CIFAR-10): l2 to the nearest training image divided by the mean l2 to the n nearest
  (n = 50); a generation is extracted when that ratio is below alpha = 0.5.
"""

from __future__ import annotations

import numpy as np


def normalized_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normalised l2 between images (broadcasting over leading axes; last three axes are one image)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    size = np.prod(diff.shape[-3:])
    return np.sqrt((diff**2).reshape(*diff.shape[:-3], -1).sum(-1) / size)


def tiled_l2(a: np.ndarray, b: np.ndarray, grid: int = 4, channels_last: bool = True) -> np.ndarray:
    """Largest normalised l2 over a grid x grid of tiles."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if not channels_last:
        diff = np.moveaxis(diff, -3, -1)
    height, width = diff.shape[-3], diff.shape[-2]
    worst = None
    for row in range(grid):
        for col in range(grid):
            tile = diff[
                ...,
                row * height // grid : (row + 1) * height // grid,
                col * width // grid : (col + 1) * width // grid,
                :,
            ]
            score = np.sqrt((tile**2).reshape(*tile.shape[:-3], -1).mean(-1))
            worst = score if worst is None else np.maximum(worst, score)
    assert worst is not None  # grid >= 1
    return worst


def pairwise_tiled_l2(images: np.ndarray, grid: int = 4, chunk: int = 64) -> np.ndarray:
    """(n, n) tiled l2 between every two of `images` (n, H, W, C), one tile at a time, so memory stays at one
    tile of every image plus the (n, n) result (not n copies of the image differences: 500 generations at
    512 px would need 3 GB for each row that way)."""
    images = np.asarray(images)
    count, height, width = images.shape[0], images.shape[1], images.shape[2]
    worst = np.zeros((count, count), np.float64)
    for row in range(grid):
        for col in range(grid):
            tile = images[
                :, row * height // grid : (row + 1) * height // grid, col * width // grid : (col + 1) * width // grid
            ].reshape(count, -1)
            tile = tile.astype(np.float64) - tile.mean(0, dtype=np.float64)  # centred: the distances are the same
            norms = (tile**2).sum(1)
            for start in range(0, count, chunk):
                block = tile[start : start + chunk]
                squared = norms[start : start + chunk, None] + norms[None, :] - 2 * block @ tile.T
                np.maximum(
                    worst[start : start + chunk],
                    np.sqrt(np.maximum(squared, 0) / tile.shape[1]),
                    out=worst[start : start + chunk],
                )
    np.fill_diagonal(worst, 0)
    return worst


def pairwise_l2(x: np.ndarray, y: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Normalised l2 between every row of x (n, d) and every row of y (m, d), flattened images."""
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float32).reshape(len(y), -1)
    d = x.shape[1]
    y_norms = (y**2).sum(1)
    out = np.empty((len(x), len(y)), dtype=np.float32)
    for start in range(0, len(x), chunk):
        block = x[start : start + chunk]
        squared = (block**2).sum(1)[:, None] + y_norms[None, :] - 2 * block @ y.T
        out[start : start + chunk] = np.sqrt(np.maximum(squared, 0) / d)
    return out


def relative_ratio(
    generations: np.ndarray, training: np.ndarray, neighbours: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """For each generation: (nearest training row, l2 to it / mean l2 to the `neighbours` nearest)."""
    distances = pairwise_l2(generations, training)
    k = min(neighbours, distances.shape[1])
    nearest_k = np.partition(distances, k - 1, axis=1)[:, :k]
    nearest = distances.argmin(1)
    ratio = distances[np.arange(len(distances)), nearest] / np.maximum(nearest_k.mean(1), 1e-12)
    return nearest, ratio
