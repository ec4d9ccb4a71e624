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
from dedup.errors import SettingsError

RUNTIMES = ("auto", "onnx", "torch")


class CopyDetectEmbedder(Embedder):
    name = "copydetect"

    def __init__(self, weights: str | None = None, runtime: str = "auto"):
        """runtime: onnx (ONNX Runtime, about three times torch's speed on CPU; the graph is exported from the
        loaded weights once and cached) or torch; auto is onnx."""
        from dedup.detector.model import load_detector, shipped_weights_path

        if runtime not in RUNTIMES:
            raise SettingsError(f"the copydetect embedder runs on {', '.join(RUNTIMES)}, not {runtime!r}")
        self.weights = str(Path(weights).resolve()) if weights else str(shipped_weights_path())
        self.model = load_detector(self.weights)
        self.input_size, self.dim = self.model.config.input_size, self.model.config.dim
        self.runtime = "torch" if runtime == "torch" else "onnx"
        self.tower = self._onnx_tower() if self.runtime == "onnx" else None

    def _onnx_tower(self):
        import torch

        from dedup.embedders.onnx_tower import OnnxImageTower

        example = torch.zeros((2, 3, self.input_size, self.input_size))
        return OnnxImageTower.for_model(self.model, example, "copydetect", self.weights, quantize=False)

    def spec(self) -> dict:
        digest = hashlib.sha256(Path(self.weights).read_bytes()).hexdigest()[:16]
        return {
            "embedder": self.name,
            "weights": self.weights,
            "sha256": digest,
            "input_size": self.input_size,
            "dim": self.dim,
            "runtime": self.runtime,
        }

    def prepare(self, image: Image.Image) -> np.ndarray:
        from dedup.detector.model import normalised_pixels

        size = (self.input_size, self.input_size)
        return normalised_pixels(image.convert("RGB").resize(size, Image.Resampling.BILINEAR), self.model.config)

    def embed(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        if not prepared:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = np.stack(prepared).astype(np.float32, copy=False)
        if self.tower is not None:
            return l2_normalize(self.tower(batch))
        with torch.inference_mode():
            return l2_normalize(self.model(torch.from_numpy(batch)).numpy())
