"""Which captions to attack with: the paper's rule is the captions of the most duplicated training images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dedup.io.runfolder import load_groups


@dataclass
class Prompt:
    caption: str
    group_id: int
    group_size: int
    key: str  # the training sample the caption was taken from


def _caption_columns(run_dir: str | Path) -> dict[str, list]:
    return load_groups(run_dir).select(["key", "group_id", "group_size", "caption"]).to_pydict()


def largest_group_prompts(run_dir: str | Path, count: int, min_size: int = 2) -> list[Prompt]:
    """The captions of the `count` largest duplicate groups in RUN_DIR/groups.parquet (one caption per group:
    its first sample with a caption), largest first."""
    groups = _caption_columns(run_dir)
    chosen: dict[int, Prompt] = {}
    for key, group, size, caption in zip(groups["key"], groups["group_id"], groups["group_size"], groups["caption"]):
        if size >= min_size and caption and caption.strip() and group not in chosen:
            chosen[group] = Prompt(caption.strip(), int(group), int(size), key)
    return sorted(chosen.values(), key=lambda p: (-p.group_size, p.group_id))[:count]


def unique_image_prompts(run_dir: str | Path, count: int, seed: int = 0) -> list[Prompt]:
    """Captions of `count` training images that have no duplicate, drawn at random: the control prompts."""
    groups = _caption_columns(run_dir)
    rows = [
        i for i, (size, caption) in enumerate(zip(groups["group_size"], groups["caption"])) if size == 1 and caption
    ]
    chosen = (
        np.random.default_rng(seed).choice(len(rows), min(count, len(rows)), replace=False)
        if rows
        else np.zeros(0, int)
    )
    return [
        Prompt(groups["caption"][rows[i]].strip(), int(groups["group_id"][rows[i]]), 1, groups["key"][rows[i]])
        for i in sorted(chosen)
    ]
