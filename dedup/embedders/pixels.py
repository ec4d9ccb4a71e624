"""The image itself, shrunk to a small square: the distance the extraction attack uses, and needs no weights.

Each vector is the downsampled RGB image in [0, 1], centred on its own mean and L2-normalised, so cosine
similarity is the Pearson correlation of the two thumbnails: insensitive to brightness shifts and JPEG
noise, sensitive to content and layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from dedup.embedders.base import Embedder, l2_normalize
from dedup.errors import SettingsError


class PixelEmbedder(Embedder):
    name = "pixels"

    def __init__(self, size: int = 16):
        if not 2 <= size <= 256:
            raise SettingsError(f"pixels size must be between 2 and 256, got {size}")
        self.size = size
        self.dim = size * size * 3

    def spec(self) -> dict:
        return {"embedder": self.name, "size": self.size, "dim": self.dim}

    def prepare(self, image: Image.Image) -> np.ndarray:
        small = image.resize((self.size, self.size), Image.Resampling.BOX, reducing_gap=None)
        vector = np.asarray(small, dtype=np.float32).reshape(-1) / 255.0
        return vector - vector.mean()

    def embed(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        if not prepared:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalize(np.stack(prepared))
