"""verify's arms: which samples each model trains on (A all, B what the run kept, each further arm what its
own run kept, or chosen from the planting), and what each arm did to the planted copies, edit by edit."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from dedup.attack.presets import RANDOM, UNSEEN
from dedup.attack.training_data import by_place, kept_by
from dedup.errors import InputError, SettingsError
from dedup.io.runfolder import RunFolder, load_manifest


def chosen_arms(arms: dict, only: list[str] | None) -> list[str]:
    """The arms to train and measure now, in the preset's order; an unknown name names the preset's arms."""
    if only is None:
        return list(arms)
    unknown = [name for name in only if name not in arms]
    if unknown:
        raise SettingsError(
            f"--arms names {', '.join(unknown)}, which the preset does not have; its arms are {', '.join(arms)}"
        )
    return [name for name in arms if name in only]


def arm_description(spec: dict) -> str:
    if spec["config"] == UNSEEN:
        return "never saw the duplicated images"
    if spec["config"] == RANDOM:
        return f"as many samples as {spec['like']} keeps, drawn at random"
    return " ".join([spec["config"], *spec["set"]])


def planted_truth(run_dir: Path) -> dict | None:
    """The planting's ground truth when verify planted the data (RUN_DIR/data/planted.json)."""
    path = RunFolder(run_dir).planted
    return json.loads(path.read_text()) if path.exists() else None


def copies_by_edit(truth: dict, sets: dict, arms: dict[str, np.ndarray]) -> dict:
    """For each edit of the planting: its copies, and how many of them each arm trained on (kept)."""
    position = {key: row for row, key in enumerate(sets["keys"])}
    rows_by_edit: dict[str, list[int]] = {}
    for key, edit in truth["transforms"].items():
        if key in position:
            rows_by_edit.setdefault(edit, []).append(position[key])
    trained = {name: np.zeros(len(sets["keys"]), bool) for name in arms}
    for name, rows in arms.items():
        trained[name][rows] = True
    return {
        edit: {"copies": len(rows), "kept": {name: int(trained[name][rows].sum()) for name in arms}}
        for edit, rows in sorted(rows_by_edit.items())
    }


def kept_per_duplicated_image(sets: dict, arms: dict[str, np.ndarray]) -> dict[str, float]:
    """For each arm, how many samples of each planted duplicate group it trains on, on average: the dose of a
    dose-response (A: every copy; B at best one)."""
    planted_rows = np.flatnonzero(sets["planted"])
    if not len(planted_rows):
        return {}
    _, group_of_row = np.unique(sets["group"][planted_rows], return_inverse=True)
    return {
        name: round(float(np.bincount(group_of_row, weights=np.isin(planted_rows, rows)).mean()), 3)
        for name, rows in arms.items()
    }


def edit_of_group(truth: dict, sets: dict) -> dict[int, str]:
    """Each planted group's edit (its group id as `training_sets` numbers it), where all its copies took one."""
    position = {key: row for row, key in enumerate(sets["keys"])}
    edits = {}
    for group in truth["groups"]:
        kinds = {truth["transforms"].get(key) for key in group[1:]}
        if len(kinds) == 1 and group[0] in position:
            edits[int(sets["group"][position[group[0]]])] = str(kinds.pop())
    return edits


def extracted_by_edit(measured_by_seed: list[dict], edits: dict[int, str]) -> dict:
    """Planted images extracted, by the edit their copies took, in each seed."""
    return {
        edit: [sum(1 for image in m["extracted_image_ids"] if edits.get(int(image)) == edit) for m in measured_by_seed]
        for edit in sorted(set(edits.values()))
    }


def training_arms(run_dir: Path, sets: dict, arms: dict[str, dict]) -> dict[str, np.ndarray]:
    """The rows each model trains on: A all, B what the run kept, each further arm what its own run kept."""
    chosen = {"A": np.arange(len(sets["rows"])), "B": np.flatnonzero(sets["kept"])}
    for name, spec in arms.items():
        if spec["config"] == RANDOM:
            continue  # drawn below, once the arm it is sized like is known
        if spec["config"] == UNSEEN:
            if not sets["planted"].any():
                raise InputError(f"arm {name!r} leaves out the planted duplicates, and {run_dir} planted none")
            chosen[name] = np.flatnonzero(~sets["planted"])
            continue
        folder = RunFolder(run_dir).arm(name)
        if not folder.manifest.exists():
            raise InputError(f"arm {name!r} has no run at {folder.root}; run `dedup verify` with the preset to make it")
        chosen[name] = np.flatnonzero(kept_by(load_manifest(folder.root), sets["rows"]))
    for name, spec in arms.items():
        if spec["config"] == RANDOM:
            size = len(chosen[spec["like"]])
            draw = np.random.default_rng(zlib.crc32(name.encode()))  # the same samples for every seed and rerun
            chosen[name] = np.sort(draw.choice(len(sets["rows"]), size, replace=False))
    return {name: chosen[name] for name in ["A", "B", *arms]}


def arm_captions(run_dir: Path, name: str, sets: dict, captions: list[str]) -> list[str] | None:
    """The captions arm `name` trains on when its run wrote new ones (select.diversify_captions), else None."""
    folder = RunFolder(run_dir) if name == "B" else RunFolder(run_dir).arm(name)
    if name == "A" or not folder.manifest.exists():  # A, or an arm with no run of its own (unseen)
        return None
    manifest = load_manifest(folder.root, ["shard", "sample_index", "new_caption"])
    if "new_caption" not in manifest.column_names:
        return None
    new = {place: caption for place, caption in by_place(manifest, "new_caption").items() if caption is not None}
    return [str(new.get(row, caption)) for row, caption in zip(sets["rows"], captions)] if new else None
