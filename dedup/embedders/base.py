"""The embedder contract: `prepare` runs in decode threads on one image, `embed` on a batch of prepared images."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image


class Embedder(ABC):
    name: str
    dim: int

    @abstractmethod
    def spec(self) -> dict:
        """Everything that decides the vectors; stored in embed.json and compared on resume."""

    @abstractmethod
    def prepare(self, image: Image.Image) -> Any:
        """Per-image preprocessing, safe to call from several threads."""

    @abstractmethod
    def embed(self, prepared: Sequence[Any]) -> np.ndarray:
        """float32 array (len(prepared), dim), each row L2-normalised."""

    def embed_texts(self, captions: Sequence[str]) -> np.ndarray | None:
        """Caption embeddings in the image space, when the model has a text tower."""
        return None


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
