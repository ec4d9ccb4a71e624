"""`dedup add`: new shards deduplicated against a finished run, without redoing it.

An increment embeds only the new shards (their parts follow the run's in the store, so every earlier row keeps
its number), searches only the pairs that involve a new row (new against all rows, the new ones included),
adds them to the run's pairs and forms the groups again. Select then decides with the run's keep rule, except
that a sample kept before goes before all others in its group: it stays kept unless a merge of two earlier
groups leaves room for fewer (or a person's label says otherwise). Write puts the samples kept and not yet
written into new output shards (PREFIX-incK-NNNNN.tar) and lists, per earlier output shard, the samples that
are no longer kept (`removals.json`, and `NAME.removed.txt` beside each such shard).

Every step reads what the increment began from (`increments/K/`: the manifest and pairs as they were), so a
step killed anywhere and run again gives what an uninterrupted one gives.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dedup.errors import InputError, SettingsError
from dedup.io.atomic import read_json, read_parquet, write_json, write_parquet
from dedup.io.runfolder import RunFolder
from dedup.io.store import EmbeddingStore, RowStack
from dedup.progress import SILENT, Reporter
from dedup.search import matching
from dedup.search.partitioned import as_reader
from dedup.search.routed import KeptPartitioning, routed_matches
from dedup.settings import FindSettings


@dataclass
class Increment:
    number: int
    shards: list[str]
    rows_before: int  # rows of the store before it: its rows are rows_before and on
    done: bool = False


@dataclass
class IncrementLog:
    """RUN_DIR/increments.json: the run's increments, the first being the run itself."""

    path: Path
    increments: list[Increment] = field(default_factory=list)

    @classmethod
    def of(cls, folder: RunFolder) -> IncrementLog:
        path = folder.increments
        if not path.exists():
            return cls(path)
        return cls(path, [Increment(**item) for item in read_json(path)["increments"]])

    def save(self) -> None:
        write_json(self.path, {"increments": [vars(item) for item in self.increments]})

    def shards(self) -> list[str]:
        return [shard for item in self.increments for shard in item.shards]


def begin(folder: RunFolder, new_shards: list[str], reporter: Reporter = SILENT) -> Increment:
    """The increment for `new_shards`: a new one on a finished run, or the unfinished one they name."""
    log = IncrementLog.of(folder)
    store = EmbeddingStore(folder.embeddings)
    spec = store.read_spec()
    if spec is None or not folder.groups.exists() or not folder.manifest.exists():
        raise InputError(
            f"{folder.root} holds no finished run to add to: run `dedup run SHARDS --run-dir {folder.root}` first"
        )
    if not log.increments:
        log.increments.append(Increment(0, list(spec["shards"]), 0, done=True))
    last = log.increments[-1]
    if not last.done:
        if last.shards != new_shards:
            raise InputError(
                f"increment {last.number} of {folder.root} did not finish: run `dedup add` again with its shards "
                f"({len(last.shards)}: {last.shards[0]} ...) before adding others"
            )
        reporter.info(f"add: resuming increment {last.number} ({len(new_shards)} shards)")
        store.write_spec({**spec, "shards": log.shards()})  # a kill may have come before the spec said so
        return last
    already = sorted(set(new_shards) & set(log.shards()))
    if already:
        raise InputError(f"{already[0]} is already in {folder.root} ({len(already)} of the shards given are)")
    if not (folder.summary.exists()):
        raise InputError(f"{folder.root}'s last run did not finish (no summary.json): rerun it before adding to it")
    rows_before = read_parquet(folder.groups, ["row"]).num_rows
    increment = Increment(last.number + 1, list(new_shards), rows_before)
    snapshot = folder.increment_snapshot(increment.number)
    snapshot.mkdir(parents=True, exist_ok=True)
    for source in (folder.manifest, folder.pairs, folder.groups):
        shutil.copyfile(source, snapshot / (source.name + ".partial"))
        (snapshot / (source.name + ".partial")).replace(snapshot / source.name)
    log.increments.append(increment)
    log.save()  # last: from here on the increment exists, and its snapshot is whole
    store.write_spec({**spec, "shards": log.shards()})
    return increment


def finish(folder: RunFolder, increment: Increment) -> None:
    log = IncrementLog.of(folder)
    log.increments[increment.number].done = True
    log.save()


def _rows(samples, start: int, stop: int | None = None):
    """The samples of rows [start, stop), as a Samples of their own (views: nothing is copied)."""
    from dedup.search.signals import Samples

    part = slice(start, stop)
    vectors = samples.embeddings
    return Samples(
        samples.sha256[part],
        samples.phash[part],
        samples.phash_present[part],
        cast(np.ndarray, vectors.rows(start, stop)) if isinstance(vectors, RowStack) else vectors[part],  # read alike
        None if samples.pdq is None else samples.pdq[part],
        None if samples.thumbs is None else samples.thumbs[part],
    )


def new_pairs(samples, start: int, settings: FindSettings, kept: KeptPartitioning | None = None):
    """Every signal's pairs that involve a row from `start` on, as (smaller row, larger row) of the whole store;
    and, where the embedding search went through `kept`, the run's partitioning extended by the new rows.

    Two searches: the earlier rows as queries against the new ones, and the new rows among themselves. With
    `kept` (the partitioning `find` kept, of the rows before `start`) the embedding search routes only the new
    rows through it, so its cost follows the increment's size (dedup/search/routed.py); otherwise the index is
    built over the new rows only and every earlier row is a query."""
    from dedup.search.signals import SignalPairs, signal_pairs

    earlier, new = _rows(samples, 0, start), _rows(samples, start)
    cross_settings, across_found, within_found, extended = settings, None, None, None
    threshold, routed_seconds = settings.search_threshold(), 0.0
    if kept is not None and threshold is not None:
        routed = routed_matches(
            as_reader(samples.embeddings),
            len(samples.sha256),
            kept,
            samples.embeddings.shape[1],
            matching.partition_settings(threshold, settings),
        )
        choice = matching.IndexChoice(
            "partitioned",
            reason=f"the run's partitioning ({len(kept.centroids)} partitions): {len(samples.sha256) - start} new "
            f"rows routed through it, {routed.joins} exact joins, {routed.products / max(len(samples.sha256) - start, 1):.0f} "
            "products a new row",
        )
        across_found = (routed.across[0], routed.across[1] - start, choice)
        within_found = (routed.within[0] - start, routed.within[1] - start, choice)
        extended, routed_seconds = kept.extended(routed.new, start), routed.seconds
    elif settings.index == "auto" and start * (len(samples.sha256) - start) > settings.exact_search_max**2:
        # exact search costs queries x indexed; past what a self-join of exact_search_max rows costs, partition.
        # Many queries against few indexed rows join best with small partitions (docs/benchmarks.md, dedup add)
        cross_settings = dataclasses.replace(settings, index="partitioned", leaf_size=min(settings.leaf_size, 128))
    across = signal_pairs(earlier, new, cross_settings, embedding_found=across_found)
    within = signal_pairs(new, None, settings, embedding_found=within_found)
    found = SignalPairs(index=across.index)
    for signal in set(across.pairs) | set(within.pairs):
        empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        old_rows, new_rows = across.pairs.get(signal, empty)
        first, second = within.pairs.get(signal, empty)
        a = np.concatenate([np.asarray(old_rows, np.int64), np.asarray(first, np.int64) + start])
        b = np.concatenate([np.asarray(new_rows, np.int64) + start, np.asarray(second, np.int64) + start])
        found.pairs[signal] = (np.minimum(a, b), np.maximum(a, b))
        if signal in across.similarity or signal in within.similarity:
            found.similarity[signal] = np.concatenate(
                [
                    across.similarity.get(signal, np.zeros(len(old_rows), np.float32)),
                    within.similarity.get(signal, np.zeros(len(first), np.float32)),
                ]
            )
    for name in set(across.timings_s) | set(within.timings_s):
        found.timings_s[name] = across.timings_s.get(name, 0.0) + within.timings_s.get(name, 0.0)
    if routed_seconds:
        found.timings_s["embedding"] = found.timings_s.get("embedding", 0.0) + routed_seconds
    for name in set(across.unconfirmed) | set(within.unconfirmed):
        found.unconfirmed[name] = across.unconfirmed.get(name, 0) + within.unconfirmed.get(name, 0)
    return found, extended


def kept_partitioning(folder: RunFolder, start: int, settings: FindSettings) -> KeptPartitioning | None:
    """The partitioning find kept of the run's rows before `start`, if it serves this search; None otherwise."""
    kept = KeptPartitioning.load(folder.partitioning)
    threshold = settings.search_threshold()
    if kept is None or threshold is None or len(kept.rows.home) < start:
        return None
    if not kept.serves(matching.partition_settings(threshold, settings)):
        return None
    return kept.first(start)


def find_new(
    store_dir: Path, folder: RunFolder, increment: Increment, settings: FindSettings, reporter: Reporter = SILENT
) -> dict:
    """Pairs of the increment's rows with every row; with the pairs the run had, the groups of all rows."""
    from dedup.search.grouping import merge_pairs, record_groups
    from dedup.search.relations import copy_signals, with_relations
    from dedup.search.signals import Samples
    from dedup.search.verify_pairs import relate_pairs, verify_borderline

    settings.validate()
    started = time.perf_counter()
    start, store = increment.rows_before, EmbeddingStore(store_dir)
    kept = kept_partitioning(folder, start, settings)
    # through the kept partitioning every earlier vector is read once, partition by partition: no need to load
    # (and convert) the whole store first
    data = store.load(max_in_memory_bytes=0 if kept is not None else settings.memory_budget_gb * 1024**3)
    rows = len(data.metadata)
    if kept is not None and kept.centroids.shape[1] != data.embeddings.shape[1]:
        kept = None
    samples = Samples.from_store(store, data, settings)
    reporter.info(f"add: searching {rows - start} new samples against all {rows}")
    found, extended = new_pairs(samples, start, settings, kept)
    info: dict = {"increment": {"number": increment.number, "new_rows": rows - start}}
    if found.index is not None:
        info["index"] = {"kind": found.index.kind, "reason": found.index.reason}
    features_of: dict = {}
    if settings.verify_threshold is not None:
        low_detail = samples.low_detail_rows()
        proposed = new_rows_proposals(found, store, data.embeddings, start, low_detail, settings)
        if proposed is not None:
            reporter.info(f"add: {len(proposed.a)} pairs proposed by region queries")
        info["verification"] = verify_borderline(
            found, data.metadata, settings, reporter, features_of, proposed, low_detail
        )
    info["timings_s"] = {k: round(v, 3) for k, v in found.timings_s.items()}
    earlier = read_parquet(RunFolder(folder.increment_snapshot(increment.number)).pairs)
    earlier = with_relations(earlier.filter(pc.and_(pc.less(earlier["a"], start), pc.less(earlier["b"], start))))
    added, info["relations"] = relate_pairs(
        merge_pairs(found, samples),
        data.metadata,
        settings,
        reporter,
        features_of,
        found.evidence,
        copy_signals(data.spec.get("embedder")),
    )
    info["increment"]["pairs_added"] = len(added)
    # an earlier run's table may hold the evidence columns in another order (those added since come last)
    earlier = earlier.select(added.column_names)
    pairs = pa.concat_tables([earlier, added.cast(earlier.schema)]) if len(earlier) else added
    summary = record_groups(folder.root, store_dir, data.metadata, pairs, settings, started, info)
    if extended is not None:
        extended.save(folder.partitioning)  # after the groups: a rerun of a killed step reads only its first rows
    reporter.info(
        f"add: {len(added)} new pairs; {summary['groups']} duplicate groups holding {summary['samples_in_groups']} "
        "samples in all"
    )
    return summary


def _place(table: pa.Table) -> np.ndarray:
    shard = table["shard_index"].fill_null(-1).to_numpy().astype(np.int64)
    return (shard << 32) | table["sample_index"].fill_null(-1).to_numpy().astype(np.int64)


def _earlier_rows(before: pa.Table, after: pa.Table) -> np.ndarray:
    """For each row of `after`, the row of `before` at the same place (input shard, sample index), -1 where
    `before` has none (a new sample). Rows without a place (a shard-level fault) match nothing."""
    places, wanted = _place(before), _place(after)
    if not len(places):
        return np.full(len(after), -1, np.int64)
    order = np.argsort(places, kind="stable")
    at = np.clip(np.searchsorted(places[order], wanted), 0, len(order) - 1)
    found = (places[order][at] == wanted) & (wanted >= 0)
    return np.where(found, order[at], -1)


def _column(before: pa.Table, rows: np.ndarray, column: str, default=None) -> list:
    """`column` of `before` at `rows` (from _earlier_rows); `default` at -1, or when `before` lacks the column."""
    if column not in before.column_names:
        return [default] * len(rows)
    values = before[column].to_pylist()
    return [values[row] if row >= 0 else default for row in rows.tolist()]


def earlier_keeps(folder: RunFolder, increment: Increment) -> np.ndarray:
    """For each row of groups.parquet, whether the run kept it before the increment: select puts those first
    in their groups, so an increment never drops what earlier output holds when it need not."""
    before = read_parquet(RunFolder(folder.increment_snapshot(increment.number)).manifest)
    groups = read_parquet(folder.groups)
    return np.asarray(_column(before, _earlier_rows(before, groups), "status"), dtype=object) == "kept"


def record_increment(folder: RunFolder, increment: Increment, summary: dict) -> dict:
    """After select: the manifest keeps what write recorded of the earlier samples and says, per row, which
    increment brought the sample and which made its current decision; `summary` (select's) gets the counts."""
    before = read_parquet(RunFolder(folder.increment_snapshot(increment.number)).manifest)
    manifest = folder.load_manifest()
    earlier = _earlier_rows(before, manifest)
    new = earlier < 0
    had = np.asarray(_column(before, earlier, "status"), dtype=object)
    status = np.asarray(manifest["status"].to_pylist(), dtype=object)
    changed = new | (had != status)
    was = {name: np.asarray(_column(before, earlier, name, 0), np.int32) for name in ("increment", "decided_in")}
    carried = {
        "output_shard": pa.array(_column(before, earlier, "output_shard"), pa.string()),
        "output_key": pa.array(_column(before, earlier, "output_key"), pa.string()),
        "increment": pa.array(np.where(new, increment.number, was["increment"]), pa.int32()),
        "decided_in": pa.array(np.where(changed, increment.number, was["decided_in"]), pa.int32()),
    }
    for name, column in carried.items():
        manifest = manifest.append_column(name, column)
    write_parquet(folder.manifest, manifest)
    summary["increment"] = {
        "number": increment.number,
        "new_samples": int(new.sum()),
        "decisions_changed": int((changed & ~new).sum()),
        "kept_before_now_dropped": int(((had == "kept") & (status != "kept")).sum()),
    }
    return summary


def check_same_settings(folder: RunFolder, settings: FindSettings) -> None:
    """An increment must search as the run did, or its pairs would not be the run's."""
    if not folder.find_summary.exists():
        return
    recorded = read_json(folder.find_summary).get("settings") or {}
    how_fast = {"memory_budget_gb", "threads", "unit_rows"}  # they change the time a search takes, not its pairs
    differing = sorted(
        k for k, v in settings.__dict__.items() if k in recorded and recorded[k] != v and k not in how_fast
    )
    if differing:
        shown = ", ".join(f"find.{k}: {recorded[k]!r} then, {settings.__dict__[k]!r} now" for k in differing[:4])
        raise SettingsError(
            f"{folder.root} was searched with other find settings ({shown}): give `dedup add` the config the run "
            "was made with"
        )


def new_rows_proposals(
    found, store: EmbeddingStore, embeddings, start: int, low_detail: np.ndarray, settings: FindSettings
):
    """Region queries that touch the new rows (from `start`), where the store holds region vectors (`thorough`):
    the new images' crops against every whole image and mirror image, and every image's crops against the new
    whole images and their mirror images; pairs among earlier rows were proposed when they were added."""
    from dedup.search import regions
    from dedup.search.verify_pairs import new_proposals

    threshold, per_row = settings.region_threshold, settings.region_per_row
    crops = store.region_vectors() if threshold is not None else None
    if crops is None or threshold is None:
        return None
    wholes = embeddings.in_memory() if isinstance(embeddings, RowStack) else np.asarray(embeddings)
    mirrors = store.mirror_vectors()
    new = regions.RowSet(crops[start:], wholes[start:], mirrors[start:] if mirrors is not None else None, start)
    every = regions.RowSet(crops, wholes, mirrors, 0)
    a, b, score, region = regions.candidates_between(new, every, threshold, per_row)
    return new_proposals(found, a, b, score, region, wholes, low_detail, crops.shape[1])
