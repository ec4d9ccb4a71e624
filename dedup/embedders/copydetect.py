"""dedup's own copy-detection model (dedup/detector/): installs with the package, needs no download.

Its descriptors are made for finding edited copies (crops, flips, rotations, colour, overlays), not for
semantic similarity; the thresholds that go with it are measured in docs/quality.md."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from dedup.embedders.base import Embedder, l2_normalize


class CopyDetectEmbedder(Embedder):
    name = "copydetect"

    def __init__(self, weights: str | None = None):
        from dedup.detector.model import load_detector, shipped_weights_path

        self.weights = str(Path(weights).resolve()) if weights else str(shipped_weights_path())
        self.model = load_detector(self.weights)
        self.input_size, self.dim = self.model.config.input_size, self.model.config.dim

    def spec(self) -> dict:
        digest = hashlib.sha256(Path(self.weights).read_bytes()).hexdigest()[:16]
        return {
            "embedder": self.name,
            "weights": self.weights,
            "sha256": digest,
            "input_size": self.input_size,
            "dim": self.dim,
        }

    def prepare(self, image: Image.Image) -> np.ndarray:
        from dedup.detector.model import normalised_pixels

        size = (self.input_size, self.input_size)
        return normalised_pixels(image.convert("RGB").resize(size, Image.Resampling.BILINEAR), self.model.config)

    def embed(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        if not prepared:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            vectors = self.model(torch.from_numpy(np.stack(prepared).astype(np.float32, copy=False)))
        return l2_normalize(vectors.numpy())
