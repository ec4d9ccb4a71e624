"""write's plan: the kept samples in input order, cut into output shards; and, once the shards are written,
the manifest's record of where each kept sample went, and (dedup add) the lists of what left earlier shards."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dedup.io.atomic import atomic_open, write_json, write_parquet
from dedup.io.runfolder import RunFolder, removals_record

PLAN_COLUMNS = ["shard", "shard_index", "sample_index", "key", "status"]
# the manifest columns write reads, of 13: the plan's, then the summary's (reference_match: purged runs only)
WRITE_COLUMNS = PLAN_COLUMNS + ["match", "relation", "reference_match", "reason", "new_caption", "person_label"]
OUTPUT_COLUMNS = ["output_shard", "output_key"]  # what write adds to the manifest


@dataclass
class InputSlice:
    """The kept samples one output shard takes from one input shard, in input order."""

    shard: str
    part: int
    indexes: np.ndarray  # sample indexes in the input shard, ascending
    keys: list[str]
    captions: list[str | None] | None = None  # select.diversify_captions: a new caption per sample, or None

    @property
    def recaptioned(self) -> bool:
        return self.captions is not None and any(caption is not None for caption in self.captions)


def plan_output(manifest: pa.Table, samples_per_shard: int) -> list[list[InputSlice]]:
    """The kept samples in input order, cut into output shards of `samples_per_shard`, each a list of slices."""
    kept = manifest.select(PLAN_COLUMNS + (["new_caption"] if "new_caption" in manifest.column_names else []))
    kept = kept.filter(pc.equal(kept["status"], "kept"))
    kept = kept.take(pc.sort_indices(kept, [("shard_index", "ascending"), ("sample_index", "ascending")]))
    parts = kept["shard_index"].to_numpy()
    indexes = kept["sample_index"].to_numpy()
    keys = kept["key"].to_pylist()
    captions = kept["new_caption"].to_pylist() if "new_caption" in kept.column_names else [None] * len(keys)
    shard_of = _shard_names(kept)
    plan = []
    for first in range(0, len(keys), samples_per_shard):
        last = min(first + samples_per_shard, len(keys))
        cuts = [first, *(first + 1 + np.flatnonzero(parts[first + 1 : last] != parts[first : last - 1])).tolist(), last]
        plan.append(
            [
                InputSlice(shard_of[int(parts[a])], int(parts[a]), indexes[a:b], keys[a:b], captions[a:b])
                for a, b in zip(cuts, cuts[1:])
            ]
        )
    return plan


def _shard_names(kept: pa.Table) -> dict[int, str]:
    pairs = kept.select(["shard_index", "shard"]).group_by(["shard_index", "shard"]).aggregate([])
    return dict(zip(pairs["shard_index"].to_pylist(), pairs["shard"].to_pylist()))


def plan_digest(slices: list[InputSlice]) -> str:
    """What an output shard holds, as a marker records it: a rerun with another plan rewrites the shard."""
    digest = hashlib.sha256()
    for piece in slices:
        digest.update(f"{piece.shard}\0{len(piece.keys)}\0".encode())
        digest.update(piece.indexes.astype("<i8").tobytes())
        digest.update("\0".join(piece.keys).encode())
        if piece.recaptioned:
            digest.update("\0".join(caption or "" for caption in piece.captions or []).encode())
    return digest.hexdigest()


def sample_count(slices: list[InputSlice]) -> int:
    return sum(len(piece.keys) for piece in slices)


def shard_name(prefix: str, number: int) -> str:
    return f"{prefix}-{number:05d}.tar"


def record_outputs(
    folder: RunFolder, plan: list[list[InputSlice]], shard_stats: list[dict], prefix: str, keep_earlier: bool = False
) -> None:
    """Add to the manifest, for each kept sample, the output shard it went to and the key it was written
    under (`output_shard`, `output_key`; null for the others), replacing those of an earlier write; with
    `keep_earlier` (an increment), the rows this plan did not write keep what they had."""
    manifest = folder.load_manifest()
    earlier = {c: manifest[c] for c in OUTPUT_COLUMNS if c in manifest.column_names}
    manifest = manifest.drop_columns(list(earlier))
    pieces = [(number, piece) for number, slices in enumerate(plan) for piece in slices]
    # the plan is in input order, so the packed (input shard, sample index) of its samples ascend
    planned = np.concatenate([np.zeros(0, np.int64), *((np.int64(p.part) << 32) | p.indexes for _, p in pieces)])
    number = np.concatenate([np.zeros(0, np.int64), *(np.full(len(p.indexes), n) for n, p in pieces)])
    index = manifest["sample_index"].fill_null(-1).to_numpy().astype(np.int64)  # -1: a fault with no place
    rows = (manifest["shard_index"].fill_null(-1).to_numpy().astype(np.int64) << 32) | index
    at = np.minimum(np.searchsorted(planned, rows), max(len(planned) - 1, 0))
    written = planned[at] == rows if len(planned) else np.zeros(len(rows), bool)
    names = pa.array([shard_name(prefix, n) for n in range(len(plan))] or [""], pa.string())
    output_shard = pc.if_else(pa.array(written), names.take(pa.array(number[at] if len(planned) else at)), None)
    output_key = pc.if_else(pa.array(written), manifest["key"], None).to_pylist()
    for renamed in (r for stats in shard_stats for r in stats.get("renamed_keys", [])):  # rare: equal keys side by side
        same_place = pc.and_(
            pc.equal(manifest["shard"], renamed["shard"]), pc.equal(manifest["sample_index"], renamed["sample_index"])
        )
        for row in np.flatnonzero(same_place.to_numpy(zero_copy_only=False)).tolist():
            output_key[row] = renamed["written_as"]
    output_key_array = pa.array(output_key, pa.string())
    if keep_earlier and earlier:
        output_shard = pc.if_else(pa.array(written), output_shard, earlier["output_shard"])
        output_key_array = pc.if_else(pa.array(written), output_key_array, earlier["output_key"])
    manifest = manifest.append_column("output_shard", output_shard.cast(pa.string()))
    write_parquet(folder.manifest, manifest.append_column("output_key", output_key_array))


def write_removals(folder: RunFolder, out_dir: Path) -> int:
    """removals.json ({output shard: [keys]}) and NAME.removed.txt beside each such shard: the samples written by
    an earlier increment that are no longer kept. Returns how many."""
    manifest = folder.load_manifest(["status", *OUTPUT_COLUMNS])
    gone = manifest.filter(pc.and_(pc.is_valid(manifest["output_shard"]), pc.not_equal(manifest["status"], "kept")))
    by_shard: dict[str, list[str]] = {}
    for shard, key in zip(gone["output_shard"].to_pylist(), gone["output_key"].to_pylist()):
        by_shard.setdefault(shard, []).append(key)
    for stale in out_dir.glob("*.removed.txt"):
        if stale.name.removesuffix(".removed.txt") + ".tar" not in by_shard:
            stale.unlink()
    for shard, keys in sorted(by_shard.items()):
        with atomic_open(out_dir / (shard.removesuffix(".tar") + ".removed.txt"), "w") as handle:
            handle.write("".join(f"{key}\n" for key in sorted(keys)))
    write_json(removals_record(out_dir), {shard: sorted(keys) for shard, keys in sorted(by_shard.items())})
    return len(gone)
