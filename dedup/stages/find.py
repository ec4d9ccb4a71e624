"""`find`: duplicate pairs from every signal, then connected components into duplicate groups.

Writes, into the run folder:
- pairs.parquet: one row per duplicate pair (a, b as row numbers of groups.parquet), the signal that
  matched first (exact, then phash, then embedding), the cosine similarity and the Hamming distance;
  scores are stored so a stricter threshold can be applied later without searching again;
- groups.parquet: one row per embedded sample: key, shard, group id, group size, its nearest duplicate
  and that pair's similarity and signal;
- find.json: settings, index choice, counts, timings.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dedup.io.atomic import write_json, write_parquet
from dedup.io.runfolder import RunFolder
from dedup.io.store import EmbeddingStore
from dedup.progress import SILENT, Reporter
from dedup.search import matching
from dedup.search.components import component_labels, in_chunks
from dedup.settings import FindSettings
from dedup.stages import find_units

SIGNALS = ("exact", "phash", "embedding", "embedding+phash")


def connected_groups(rows: int, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group id (the smallest row of the component) and group size for every row."""
    labels = np.asarray(component_labels(rows, in_chunks(a, b)), dtype=np.int64)
    return labels, np.bincount(labels, minlength=rows)[labels]


def phash_columns(metadata: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """The perceptual hashes as uint64, and where they are present (clip-retrieval metadata has none)."""
    phash = metadata["phash"].fill_null(0).to_numpy().astype(np.uint64)
    return phash, ~metadata["phash"].is_null().to_numpy(zero_copy_only=False)


def collect_pairs(
    store_data, phash: np.ndarray, phash_present: np.ndarray, settings: FindSettings, reporter: Reporter, units=None
) -> tuple[dict, dict]:
    metadata, embeddings = store_data.metadata, store_data.embeddings
    rows = len(metadata)
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    timings: dict[str, float] = {}
    info: dict = {}
    if settings.exact:
        started = time.perf_counter()
        found["exact"] = matching.exact_pairs(np.asarray(metadata["sha256"].to_pylist(), dtype=object))
        timings["exact"] = time.perf_counter() - started
    if settings.phash_radius is not None and phash_present.any():
        started = time.perf_counter()
        found["phash"] = matching.phash_pairs(phash, settings.phash_radius, phash_present)
        timings["phash"] = time.perf_counter() - started
    threshold = settings.search_threshold()
    if threshold is not None and rows > 1:
        started = time.perf_counter()
        with reporter.task("find: embedding search", total=rows, unit="queries") as progress:
            a, b, choice = matching.embedding_pairs(
                embeddings,
                threshold,
                settings,
                on_batch=lambda n: progress.advance(n, samples=n),
                units=units,
            )
        masks = matching.signal_masks(
            matching.cosine(embeddings, a, b), phash[a], phash_present[a], phash[b], phash_present[b], settings
        )
        found.update({signal: (a[mask], b[mask]) for signal, mask in masks.items()})
        timings["embedding"] = time.perf_counter() - started
        info["index"] = {"kind": choice.kind, "nlist": choice.nlist, "nprobe": choice.nprobe, "reason": choice.reason}
        reporter.info(f"find: {choice.reason}")
    info["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    return found, info


def stack_signals(found: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs of every signal as (a, b, signal code), codes in SIGNALS order (lower = stronger)."""
    a_parts, b_parts, code_parts = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.int8)]
    for code, signal in enumerate(SIGNALS):
        if signal in found:
            a_parts.append(found[signal][0])
            b_parts.append(found[signal][1])
            code_parts.append(np.full(len(found[signal][0]), code, dtype=np.int8))
    return np.concatenate(a_parts), np.concatenate(b_parts), np.concatenate(code_parts)


def merge_pairs(found: dict, embeddings: np.ndarray, phash: np.ndarray, phash_present: np.ndarray) -> pa.Table:
    """One row per unordered pair, labelled with the first signal (in SIGNALS order) that found it."""
    a, b, codes = stack_signals(found)
    packed = a * (1 << 32) + b
    order = np.lexsort((codes, packed))
    first = np.ones(len(order), dtype=bool)
    first[1:] = packed[order][1:] != packed[order][:-1]
    keep = order[first]
    a, b, codes = a[keep], b[keep], codes[keep]
    both_hashed = phash_present[a] & phash_present[b]
    distances = np.where(both_hashed, matching.hamming(phash, a, b), -1).astype(np.int32)
    return pa.table(
        {
            "a": pa.array(a, pa.int64()),
            "b": pa.array(b, pa.int64()),
            "signal": pa.array(np.asarray(SIGNALS, dtype=object)[codes].tolist() if len(codes) else [], pa.string()),
            "similarity": pa.array(matching.cosine(embeddings, a, b), pa.float32()),
            "hamming": pa.array(distances, pa.int32()),
        }
    )


def best_partner(
    rows: int, node: np.ndarray, partner: np.ndarray, codes: np.ndarray, similarity: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of `rows`, the partner of its best candidate (strongest signal, then highest similarity),
    that similarity and that signal's code; -1, NaN and -1 where a row has no candidate."""
    order = np.lexsort((-similarity, codes, node))
    first = np.ones(len(order), dtype=bool)
    first[1:] = node[order][1:] != node[order][:-1]
    chosen = order[first]
    best = np.full(rows, -1, dtype=np.int64)
    best_similarity = np.full(rows, np.nan, dtype=np.float32)
    best_code = np.full(rows, -1, dtype=np.int8)
    best[node[chosen]] = partner[chosen]
    best_similarity[node[chosen]] = similarity[chosen]
    best_code[node[chosen]] = codes[chosen]
    return best, best_similarity, best_code


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


def find(
    store_dir: str | Path,
    run_dir: str | Path,
    settings: FindSettings | None = None,
    reporter: Reporter = SILENT,
    engine=None,
) -> dict:
    """Find duplicate groups among the embeddings in `store_dir`; write groups.parquet and pairs.parquet.
    With an `engine`, a partitioned search runs its units on it, resumably (`find_units`)."""
    settings = settings or FindSettings()
    settings.validate()
    started = time.perf_counter()
    data = EmbeddingStore(store_dir).load(max_in_memory_bytes=settings.memory_budget_gb * 1024**3)
    metadata, embeddings = data.metadata, data.embeddings
    rows = len(metadata)
    if settings.threshold is not None and data.spec.get("embedder", {}) == "external":
        reporter.info(f"find: reading clip-retrieval embeddings from {store_dir} ({rows} vectors)")
    reporter.info(f"find: {rows} samples, {embeddings.shape[1]}-d embeddings")

    phash, phash_present = phash_columns(metadata)
    units = find_units.EngineUnits(store_dir, run_dir, engine, reporter, embeddings) if engine is not None else None
    try:
        found, info = collect_pairs(data, phash, phash_present, settings, reporter, units)
    finally:
        if units is not None:
            units.release()
    pairs = merge_pairs(found, embeddings, phash, phash_present)
    group_id, group_size = connected_groups(rows, pairs["a"].to_numpy(), pairs["b"].to_numpy())
    nearest, nearest_sim, nearest_code = nearest_duplicates(rows, pairs)

    keys = metadata["key"]
    shards = metadata["shard"]
    has_nearest = nearest >= 0
    safe = np.where(has_nearest, nearest, 0)
    groups = pa.table(
        {
            "row": pa.array(np.arange(rows, dtype=np.int64)),
            "key": keys,
            "shard": shards,
            "shard_index": metadata["shard_index"],
            "sample_index": metadata["sample_index"],
            "group_id": pa.array(group_id),
            "group_size": pa.array(group_size.astype(np.int64)),
            "nearest_key": pc.if_else(pa.array(has_nearest), keys.take(pa.array(safe)), pa.scalar(None, pa.string())),
            "nearest_shard": pc.if_else(
                pa.array(has_nearest), shards.take(pa.array(safe)), pa.scalar(None, pa.string())
            ),
            "nearest_similarity": pa.array(np.where(has_nearest, nearest_sim, np.nan), pa.float32(), mask=~has_nearest),
            "match": pa.array([SIGNALS[c] if c >= 0 else None for c in nearest_code], pa.string()),
            "width": metadata["width"],
            "height": metadata["height"],
            "caption": metadata["caption"],
        }
    )
    run_dir = Path(run_dir)
    write_parquet(RunFolder(run_dir).pairs, pairs)
    write_parquet(RunFolder(run_dir).groups, groups)
    counts = {s: int(pc.sum(pc.equal(pairs["signal"], s)).as_py() or 0) for s in SIGNALS}
    in_groups = int((group_size > 1).sum())
    summary = {
        "store": str(store_dir),
        "samples": rows,
        "pairs": len(pairs),
        "pairs_by_signal": counts,
        "groups": int(len(np.unique(group_id[group_size > 1]))),
        "samples_in_groups": in_groups,
        "settings": settings.__dict__,
        "seconds": round(time.perf_counter() - started, 3),
        **info,
    }
    write_json(RunFolder(run_dir).find_summary, summary)
    if units is not None:
        units.done()
    reporter.event("find_done", **{k: v for k, v in summary.items() if k != "settings"})
    reporter.info(
        f"find: {summary['groups']} duplicate groups holding {in_groups} samples ({len(pairs)} pairs: {counts})"
    )
    return summary
