"""`find`: duplicate pairs from every signal, then connected components into duplicate groups.

Writes, into the run folder:
- pairs.parquet: one row per duplicate pair (a, b as row numbers of groups.parquet), the signal that
  matched first (in SIGNALS order), the cosine similarity, the Hamming distance and, for a pair that local
  features verified, its inliers (-1 otherwise);
  scores are stored so a stricter threshold can be applied later without searching again;
- groups.parquet: one row per embedded sample: key, shard, group id, group size, its nearest duplicate
  and that pair's similarity and signal;
- find.json: settings, index choice, counts, timings.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dedup.io.atomic import write_json, write_parquet
from dedup.io.runfolder import RunFolder
from dedup.io.samples import KEY_FIRST, sample_id
from dedup.io.store import EmbeddingStore
from dedup.progress import SILENT, Reporter
from dedup.search import matching
from dedup.search.components import component_labels, in_chunks
from dedup.search.signals import SIGNALS, Samples, SignalPairs, best_partner, signal_pairs, stacked, with_similarity
from dedup.settings import FindSettings
from dedup.stages import find_units
from dedup.stages.verify_pairs import verify_borderline


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


def _images_readable(metadata: pa.Table, spec: dict) -> bool:
    """Whether verification can read the images again: a store dedup embedded, which names each row's shard."""
    return spec.get("embedder") != "external" and metadata["shard"].null_count < len(metadata)


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

    if settings.verify_threshold is not None and not _images_readable(data.metadata, data.spec):
        reporter.info(
            f"find: {store_dir} records no shards to read the images from (clip-retrieval's layout): pairs "
            "below the threshold cannot be verified, so verify_threshold is not used"
        )
        settings = dataclasses.replace(settings, verify_threshold=None)
    samples = Samples.from_store(EmbeddingStore(store_dir), data, settings)
    if settings.pdq_radius is not None and samples.pdq is None:
        reporter.info(
            f"find: pdq_radius is set, but {store_dir} holds no PDQ hashes (embedded by an older dedup, "
            "or clip-retrieval's): the pdq signal is skipped; embed again into a new folder to use it"
        )
    units = find_units.EngineUnits(store_dir, run_dir, engine, reporter, embeddings) if engine is not None else None
    try:
        searching = settings.search_threshold() is not None and rows > 1
        with (
            reporter.task("find: embedding search", total=rows, unit="queries")
            if searching
            else nullcontext() as progress
        ):
            on_batch = (lambda n: progress.advance(n, samples=n)) if progress is not None else None
            found = signal_pairs(samples, None, settings, on_batch, units)
    finally:
        if units is not None:
            units.release()
    keep_partitioning(RunFolder(run_dir), found.index)
    info: dict = {}
    if found.index is not None:
        choice = found.index
        info["index"] = {"kind": choice.kind, "nlist": choice.nlist, "nprobe": choice.nprobe, "reason": choice.reason}
        reporter.info(f"find: {choice.reason}")
    if settings.verify_threshold is not None:
        info["verification"] = verify_borderline(found, metadata, settings, reporter)
    info["timings_s"] = {k: round(v, 3) for k, v in found.timings_s.items()}
    if found.unconfirmed:
        info["low_detail_unconfirmed"] = found.unconfirmed
        if sum(found.unconfirmed.values()):
            reporter.info(f"find: low-detail pairs whose thumbnails disagree, not counted: {found.unconfirmed}")
    pairs = merge_pairs(found, samples)
    summary = record_groups(run_dir, store_dir, metadata, pairs, settings, started, info)
    if units is not None:
        units.done()
    reporter.event("find_done", **{k: v for k, v in summary.items() if k != "settings"})
    reporter.info(
        f"find: {summary['groups']} duplicate groups holding {summary['samples_in_groups']} samples "
        f"({len(pairs)} pairs: {summary['pairs_by_signal']})"
    )
    return summary


def keep_partitioning(folder: RunFolder, index: matching.IndexChoice | None) -> None:
    """Keep a partitioned search's top split for `dedup add`; remove one a former search left."""
    if index is None or index.partitioning is None:
        folder.partitioning.unlink(missing_ok=True)
        return
    index.partitioning.save(folder.partitioning)


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
