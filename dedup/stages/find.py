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

import pyarrow as pa

from dedup.io.runfolder import RunFolder
from dedup.io.store import EmbeddingStore
from dedup.progress import SILENT, Reporter
from dedup.search import matching
from dedup.search.grouping import merge_pairs, record_groups
from dedup.search.relations import copy_signals
from dedup.search.signals import Samples, signal_pairs
from dedup.search.verify_pairs import region_proposals, relate_pairs, verify_borderline
from dedup.settings import FindSettings
from dedup.stages import find_units


def _images_readable(metadata: pa.Table, spec: dict) -> bool:
    """Whether verification can read the images again: a store dedup embedded, which names each row's shard."""
    return spec.get("embedder") != "external" and metadata["shard"].null_count < len(metadata)


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
    store = EmbeddingStore(store_dir)
    data = store.load(max_in_memory_bytes=settings.memory_budget_gb * 1024**3)
    metadata, embeddings = data.metadata, data.embeddings
    rows = len(metadata)
    if settings.threshold is not None and data.spec.get("embedder", {}) == "external":
        reporter.info(f"find: reading clip-retrieval embeddings from {store_dir} ({rows} vectors)")
    reporter.info(f"find: {rows} samples, {embeddings.shape[1]}-d embeddings")

    readable = _images_readable(data.metadata, data.spec)
    if settings.verify_threshold is not None and not readable:
        reporter.info(
            f"find: {store_dir} records no shards to read the images from (clip-retrieval's layout): pairs "
            "below the threshold cannot be verified, so verify_threshold is not used"
        )
        settings = dataclasses.replace(settings, verify_threshold=None)
    samples = Samples.from_store(store, data, settings)
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
    features_of: dict = {}  # each row's keypoints, read once for verification and relations
    if settings.verify_threshold is not None:
        proposed, low_detail = None, samples.low_detail_rows()
        region_vectors = store.region_vectors() if settings.region_threshold is not None else None
        if region_vectors is not None:
            mirrors = store.mirror_vectors()
            proposed = region_proposals(found, region_vectors, mirrors, embeddings, low_detail, settings)
            reporter.info(f"find: {len(proposed.a)} pairs proposed by region queries")
        info["verification"] = verify_borderline(found, metadata, settings, reporter, features_of, proposed, low_detail)
    info["timings_s"] = {k: round(v, 3) for k, v in found.timings_s.items()}
    if found.unconfirmed:
        info["low_detail_unconfirmed"] = found.unconfirmed
        if sum(found.unconfirmed.values()):
            reporter.info(f"find: low-detail pairs whose thumbnails disagree, not counted: {found.unconfirmed}")
    pairs = merge_pairs(found, samples)
    pairs, info["relations"] = relate_pairs(
        pairs,
        metadata if readable else None,
        settings,
        reporter,
        features_of,
        found.evidence,
        copy_signals(data.spec.get("embedder")),
    )
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
