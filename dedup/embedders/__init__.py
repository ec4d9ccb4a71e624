"""Embedders by name. Heavy imports happen only when an embedder is built."""

from __future__ import annotations

from dedup.embedders.base import Embedder
from dedup.errors import SettingsError

EMBEDDERS = ("clip", "pixels", "model")


def build_embedder(name: str, **options) -> Embedder:
    """Build an embedder from its name and the options of `EmbedSettings` that concern it."""
    if name == "pixels":
        from dedup.embedders.pixels import PixelEmbedder

        return PixelEmbedder(size=options.get("pixel_size", 16))
    if name == "clip":
        from dedup.embedders.clip import ClipEmbedder

        return ClipEmbedder(
            model=options.get("model", "ViT-B-32"),
            pretrained=options.get("pretrained"),
            device=options.get("device", "auto"),
            precision=options.get("precision", "auto"),
            model_config=options.get("model_config"),
            text=options.get("text", False),
            runtime=options.get("runtime", "torch"),
        )
    if name == "model":
        from dedup.embedders.model import ExportedModelEmbedder

        return ExportedModelEmbedder(
            path=options.get("model_path") or "",
            input_size=options.get("input_size", 224),
            mean=options.get("mean") or (0.485, 0.456, 0.406),
            std=options.get("std") or (0.229, 0.224, 0.225),
            resize_mode=options.get("resize_mode", "resize"),
        )
    raise SettingsError(f"unknown embedder {name!r}; choose one of {', '.join(EMBEDDERS)}")


__all__ = ["EMBEDDERS", "Embedder", "build_embedder"]
