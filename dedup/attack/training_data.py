"""The training images of a run, read back from its shards for the attacks, and what a model is conditioned on."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
from PIL import Image

from dedup.attack.diffusion import ModelSettings
from dedup.attack.text import CaptionVocabulary
from dedup.errors import InputError
from dedup.io.imaging import UnreadableImage, open_image
from dedup.io.reader import iter_selected, iter_source
from dedup.io.sources import expand_shards


@dataclass
class Images:
    images: np.ndarray  # (n, 3, r, r) in [-1, 1]
    labels: np.ndarray  # class ids (json label_id, else 0)
    captions: list[str]  # .txt, else json caption, else ""

    def take(self, rows) -> Images:
        rows = np.asarray(rows)
        return Images(self.images[rows], self.labels[rows], [self.captions[i] for i in rows])


def _caption(files: dict, meta: dict) -> str:
    if "txt" in files:
        return files["txt"].decode("utf-8", "replace").strip()
    return str(meta.get("caption") or "")


def load_images(rows: list[tuple[str, int]], resolution: int) -> Images:
    """The images at `rows` ((shard, sample_index)), in that order, with their labels and captions."""
    position_of = {place: position for position, place in enumerate(rows)}
    images = np.zeros((len(rows), 3, resolution, resolution), np.float32)
    labels = np.zeros(len(rows), np.int64)
    captions = [""] * len(rows)
    found = 0
    for sample in iter_selected(rows):
        try:
            image = open_image(sample.files)[0].resize((resolution, resolution), Image.Resampling.BICUBIC)
        except UnreadableImage:
            continue
        position = position_of[(sample.shard, sample.index)]
        images[position] = np.asarray(image, np.float32).transpose(2, 0, 1) / 127.5 - 1
        try:
            meta = json.loads(sample.files.get("json", b"{}"))
            meta = meta if isinstance(meta, dict) else {}
        except ValueError:
            meta = {}
        try:
            labels[position] = int(meta.get("label_id", 0))
        except (ValueError, TypeError):
            pass
        captions[position] = _caption(sample.files, meta)
        found += 1
    if found != len(rows):
        raise InputError(
            f"{len(rows) - found} training images could not be read back; did the shards change since the run?"
        )
    return Images(images, labels, captions)


def load_holdout(shards: list[str], count: int, resolution: int) -> Images:
    rows = []
    for url in expand_shards(shards):
        for sample in iter_source(url, on_fault=lambda fault: None):
            rows.append((url, sample.index))
            if len(rows) == count:
                return load_images(rows, resolution)
    return load_images(rows, resolution)


def training_sets(manifest, planted_groups: list[list[str]] | None = None) -> dict:
    """The run's readable samples (rows), which the run kept, and each one's duplicate group, its size and the
    sample's rank in it. With `planted_groups` (the planting's ground truth: source key first, then its
    copies) those groups replace what the run found for the samples they hold, so every arm of a verify is
    measured on the same duplicated images whatever its detector found."""
    readable = manifest.filter(pc.not_equal(manifest["status"], "unreadable"))
    rows = list(zip(readable["shard"].to_pylist(), readable["sample_index"].to_pylist()))
    status = readable["status"].to_pylist()
    sizes = np.array([s or 1 for s in readable["group_size"].to_pylist()], np.int64)
    groups = np.array(
        [g if g is not None else -1 - i for i, g in enumerate(readable["group_id"].to_pylist())], np.int64
    )
    ranks = np.array([r or 0 for r in readable["rank"].to_pylist()], np.int64)
    planted = np.zeros(len(rows), dtype=bool)
    if planted_groups:
        position = {key: i for i, key in enumerate(readable["key"].to_pylist())}
        first_id = int(groups.max(initial=0)) + 1
        for number, group in enumerate(planted_groups):
            members = [position[key] for key in group if key in position]
            for rank, row in enumerate(members):
                groups[row], sizes[row], ranks[row] = first_id + number, len(members), rank
            planted[members] = len(members) > 1
    return {
        "rows": rows,
        "keys": readable["key"].to_pylist(),
        "kept": np.array([s == "kept" for s in status]),
        "group_size": sizes,
        "group": groups,
        "rank": ranks,
        "planted": planted,  # in a planted duplicate group (source or copy)
    }


def by_place(manifest, column: str) -> dict[tuple[str, int], object]:
    """A manifest column by sample place, (shard, sample_index): how runs of the same shards are lined up."""
    return dict(
        zip(zip(manifest["shard"].to_pylist(), manifest["sample_index"].to_pylist()), manifest[column].to_pylist())
    )


def kept_by(manifest, rows: list[tuple[str, int]]) -> np.ndarray:
    """Which of `rows` ((shard, sample_index)) another run of the same shards kept."""
    status = by_place(manifest, "status")
    return np.array([status.get(row) == "kept" for row in rows])


def to_display_range(images: np.ndarray) -> np.ndarray:
    return ((images.transpose(0, 2, 3, 1) + 1) / 2).clip(0, 1)


class Conditioning:
    """Turns labels and captions into what the model is conditioned on (None, class ids or caption tokens)."""

    def __init__(self, settings: ModelSettings, training_captions: list[str]):
        self.settings = settings
        self.vocabulary = (
            CaptionVocabulary.build(training_captions, settings.vocabulary_size, settings.max_words)
            if settings.captions
            else None
        )

    def of(self, data: Images) -> np.ndarray | None:
        return self.tokens(data.captions) if self.vocabulary else data.labels if self.settings.classes else None

    def tokens(self, captions: list[str]) -> np.ndarray:
        if self.vocabulary is None:
            raise ValueError("captions are tokens only for a caption-conditioned model")
        return self.vocabulary.encode(captions)

    @property
    def empty(self) -> np.ndarray | None:
        return self.vocabulary.empty()[0] if self.vocabulary else None

    @property
    def vocabulary_length(self) -> int:
        return len(self.vocabulary) if self.vocabulary else 0
