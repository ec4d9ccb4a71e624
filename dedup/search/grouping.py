"""From pairs to groups, what `find` and `dedup add` share: one row per unordered pair labelled with the first
signal that found it, connected components as duplicate groups, each row's nearest duplicate, and the files
that record them (pairs.parquet, groups.parquet, find.json)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dedup.io.atomic import write_json, write_parquet
from dedup.io.runfolder import RunFolder
from dedup.io.samples import KEY_FIRST, sample_id
from dedup.search import matching
from dedup.search.components import component_labels, in_chunks
from dedup.search.signals import SIGNALS, Samples, SignalPairs, best_partner, stacked, with_similarity
from dedup.settings import FindSettings


def connected_groups(rows: int, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group id (the smallest row of the component) and group size for every row."""
    labels = np.asarray(component_labels(rows, in_chunks(a, b)), dtype=np.int64)
    return labels, np.bincount(labels, minlength=rows)[labels]


def merge_pairs(found: SignalPairs, samples: Samples) -> pa.Table:
    """One row per unordered pair, labelled with the first signal (in SIGNALS order) that found it."""
    a, b, codes, similarity = stacked(found)
    packed = a * (1 << 32) + b
    order = np.lexsort((codes, packed))
    first = np.ones(len(order), dtype=bool)
    first[1:] = packed[order][1:] != packed[order][:-1]
    keep = order[first]
    a, b, codes = a[keep], b[keep], codes[keep]
    similarity = with_similarity(similarity[keep], samples.embeddings, samples.embeddings, a, b)
    both_hashed = samples.phash_present[a] & samples.phash_present[b]
    distances = np.where(both_hashed, matching.hamming(samples.phash, a, b), -1).astype(np.int32)
    inliers = np.full(len(a), -1, dtype=np.int32)
    if "verified" in found.inliers:
        verified_a, verified_b = found.pairs["verified"]
        inlier_of = dict(zip((verified_a * (1 << 32) + verified_b).tolist(), found.inliers["verified"].tolist()))
        is_verified = codes == SIGNALS.index("verified")
        inliers[is_verified] = [inlier_of[key] for key in (a * (1 << 32) + b)[is_verified].tolist()]
    return pa.table(
        {
            "a": pa.array(a, pa.int64()),
            "b": pa.array(b, pa.int64()),
            "signal": pa.array(np.asarray(SIGNALS, dtype=object)[codes].tolist() if len(codes) else [], pa.string()),
            "similarity": pa.array(similarity, pa.float32()),
            "hamming": pa.array(distances, pa.int32()),
            "inliers": pa.array(inliers, pa.int32()),
        }
    )


def nearest_duplicates(rows: int, pairs: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each row, the partner of its best pair (strongest signal, then highest similarity); -1 if none."""
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    codes = np.array([SIGNALS.index(s) for s in pairs["signal"].to_pylist()], dtype=np.int8)
    similarity = pairs["similarity"].to_numpy()
    return best_partner(
        rows,
        np.concatenate([a, b]),
        np.concatenate([b, a]),
        np.concatenate([codes, codes]),
        np.concatenate([similarity, similarity]),
    )


def nearest_columns(
    table: pa.Table, nearest: np.ndarray, similarity: np.ndarray, codes: np.ndarray, names=SIGNALS
) -> dict[str, pa.Array]:
    """groups.parquet's columns naming each row's nearest duplicate (key, shard, similarity, signal `names[code]`),
    null where a row has none (`nearest` -1)."""
    has_nearest = nearest >= 0
    safe = pa.array(np.where(has_nearest, nearest, 0))
    missing = pa.scalar(None, pa.string())
    return {
        "nearest_key": pc.if_else(pa.array(has_nearest), table["key"].take(safe), missing),
        "nearest_shard": pc.if_else(pa.array(has_nearest), table["shard"].take(safe), missing),
        "nearest_similarity": pa.array(np.where(has_nearest, similarity, np.nan), pa.float32(), mask=~has_nearest),
        "match": pa.array([names[c] if c >= 0 else None for c in codes], pa.string()),
    }


def groups_table(metadata: pa.Table, pairs: pa.Table) -> pa.Table:
    """groups.parquet: each row's group (connected components of `pairs`) and its nearest duplicate."""
    rows = len(metadata)
    group_id, group_size = connected_groups(rows, pairs["a"].to_numpy(), pairs["b"].to_numpy())
    return pa.table(
        {
            "row": pa.array(np.arange(rows, dtype=np.int64)),
            **sample_id(metadata, KEY_FIRST),
            "group_id": pa.array(group_id),
            "group_size": pa.array(group_size.astype(np.int64)),
            **nearest_columns(metadata, *nearest_duplicates(rows, pairs)),
            "width": metadata["width"],
            "height": metadata["height"],
            "caption": metadata["caption"],
        }
    )


def record_groups(
    run_dir: str | Path,
    store_dir: str | Path,
    metadata: pa.Table,
    pairs: pa.Table,
    settings: FindSettings,
    started: float,
    info: dict,
) -> dict:
    """Write pairs.parquet, groups.parquet (from the pairs) and find.json; return find.json's content."""
    groups = groups_table(metadata, pairs)
    group_id, group_size = groups["group_id"].to_numpy(), groups["group_size"].to_numpy()
    folder = RunFolder(run_dir)
    write_parquet(folder.pairs, pairs)
    write_parquet(folder.groups, groups)
    in_groups = int((group_size > 1).sum())
    summary = {
        "store": str(store_dir),
        "samples": len(metadata),
        "pairs": len(pairs),
        "pairs_by_signal": {s: int(pc.sum(pc.equal(pairs["signal"], s)).as_py() or 0) for s in SIGNALS},
        "groups": int(len(np.unique(group_id[group_size > 1]))),
        "samples_in_groups": in_groups,
        "settings": settings.__dict__,
        "seconds": round(time.perf_counter() - started, 3),
        **info,
    }
    write_json(folder.find_summary, summary)
    return summary
