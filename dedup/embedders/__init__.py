"""Embedders by name, built from EmbedSettings (which holds their defaults). Heavy imports happen only when an
embedder is built."""

from __future__ import annotations

import dataclasses

from dedup.embedders.base import Embedder
from dedup.errors import SettingsError
from dedup.settings import EmbedSettings
from dedup.settings.run import EMBEDDERS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def embedder_from(settings: EmbedSettings) -> Embedder:
    """The embedder `settings.embedder` names, with the options of `settings` that concern it."""
    if settings.embedder == "pixels":
        from dedup.embedders.pixels import PixelEmbedder

        return PixelEmbedder(size=settings.pixel_size)
    if settings.embedder == "clip":
        from dedup.embedders.clip import ClipEmbedder

        return ClipEmbedder(
            model=settings.model,
            pretrained=settings.pretrained,
            device=settings.device,
            precision=settings.precision,
            model_config=settings.model_config,
            text=settings.text,
            runtime="torch" if settings.runtime == "auto" else settings.runtime,
        )
    if settings.embedder == "copydetect":
        from dedup.embedders.copydetect import CopyDetectEmbedder

        return CopyDetectEmbedder(weights=settings.model_path, runtime=settings.runtime)
    if settings.embedder == "model":
        from dedup.embedders.model import ExportedModelEmbedder

        return ExportedModelEmbedder(
            path=settings.model_path or "",
            input_size=settings.input_size,
            mean=settings.mean or IMAGENET_MEAN,
            std=settings.std or IMAGENET_STD,
            resize_mode=settings.resize_mode,
        )
    raise SettingsError(f"unknown embedder {settings.embedder!r}; choose one of {', '.join(EMBEDDERS)}")


def build_embedder(name: str, **options) -> Embedder:
    """`embedder_from` with the options as keywords: build_embedder("clip", pretrained="ckpt.pt")."""
    known = {f.name for f in dataclasses.fields(EmbedSettings)}
    unknown = set(options) - known
    if unknown:
        raise SettingsError(f"unknown embedder options {sorted(unknown)}; known: {', '.join(sorted(known))}")
    return embedder_from(EmbedSettings(**{**options, "embedder": name}))


__all__ = ["EMBEDDERS", "Embedder", "build_embedder", "embedder_from"]
