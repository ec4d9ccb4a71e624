"""The partitioned search as units of work: after the first split, joins are grouped into units (`plan_units`)
that run apart (`run_unit`): here, one after the other, or on an engine through a `UnitRunner`
(`dedup/stages/find_units.py`), which keeps their plans and pairs so that a rerun resumes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dedup.search.partitioned import (
    Join,
    PartitionedJoin,
    Partitioning,
    PartitionSettings,
    PartitionStats,
    RowReader,
    as_reader,
)


@dataclass
class UnitPlan:
    """One unit of work after the first split: whole joins (rows are global), run apart from the others."""

    joins: list[Join]

    def home_rows(self) -> int:
        return sum(len(queries) for queries, _, _, home in self.joins if home)

    def save(self, path) -> None:
        from dedup.io.atomic import atomic_open

        with atomic_open(path, "wb") as handle:
            np.savez(handle, **_flatten(self.joins))  # type: ignore[arg-type]

    @classmethod
    def load(cls, path) -> UnitPlan:
        with np.load(path) as saved:  # each item access reads the array from the archive again: once each
            saved = {name: saved[name] for name in saved.files}
        queries, indexed, bounds_q, bounds_r = (
            saved[name] for name in ("query_rows", "indexed_rows", "query_bounds", "indexed_bounds")
        )
        return cls(
            [
                (
                    queries[bounds_q[k] : bounds_q[k + 1]],
                    indexed[bounds_r[k] : bounds_r[k + 1]],
                    bool(saved["same"][k]),
                    bool(saved["home"][k]),
                )
                for k in range(len(saved["same"]))
            ]
        )


def _flatten(joins: list[Join]) -> dict[str, np.ndarray]:
    def bounds(arrays):
        return np.cumsum([0, *(len(a) for a in arrays)])

    return {
        "query_rows": np.concatenate([j[0] for j in joins]),
        "query_bounds": bounds([j[0] for j in joins]),
        "indexed_rows": np.concatenate([j[1] for j in joins]),
        "indexed_bounds": bounds([j[1] for j in joins]),
        "same": np.array([j[2] for j in joins]),
        "home": np.array([j[3] for j in joins]),
    }


def plan_units(
    read_queries: RowReader,
    query_count: int,
    read_indexed: RowReader,
    indexed_count: int,
    dim: int,
    settings: PartitionSettings,
    same: bool = False,
) -> tuple[list[UnitPlan], PartitionStats, Partitioning | None]:
    """Route every vector once (the first split) and group the resulting joins into units of about
    `settings.unit_rows` rows to read, a partition's home join and its joins across borders together.
    Also returns the first split (None if the join was small enough to run whole)."""
    row_type = (
        np.int32 if max(query_count, indexed_count) < np.iinfo(np.int32).max else np.int64
    )  # halves routing memory
    query_rows, indexed_rows = np.arange(query_count, dtype=row_type), np.arange(indexed_count, dtype=row_type)
    planner = PartitionedJoin(read_queries, read_indexed, dim, settings)
    partitioning = planner.partition(query_rows, indexed_rows, same, depth=0) if query_count and indexed_count else None
    if partitioning is None:
        return [UnitPlan([(query_rows, indexed_rows, same, True)])], planner.stats, None
    parts = planner.joins_of(partitioning, query_rows, indexed_rows, same)
    parts.sort(key=lambda tagged: tagged[0])  # stable: each partition's home join, then its joins across borders
    units: list[UnitPlan] = []
    current: list[Join] = []
    size, previous = 0, None
    for partition, join in parts:
        if current and size >= settings.unit_rows and partition != previous:
            units.append(UnitPlan(current))
            current, size = [], 0
        current.append(join)
        size += len(join[0]) + len(join[1])
        previous = partition
    units.append(UnitPlan(current))
    return units, planner.stats, partitioning


def run_unit(
    plan: UnitPlan,
    read_queries: RowReader,
    read_indexed: RowReader,
    dim: int,
    settings: PartitionSettings,
    one_source: bool,
    on_home_rows: Callable[[int], None] | None = None,
    gather: bool = True,
) -> tuple[np.ndarray, np.ndarray, PartitionStats]:
    """The unit's pairs. With `gather` its vectors are read once, in row order, into memory, and the joins
    below read them there, not through the store (on a memory-mapped store of many parts, a read per small
    join was what made 10M vectors slow); vectors already in memory are read where they are.
    `one_source`: queries and indexed rows are rows of the same vectors."""
    if not gather:
        join = PartitionedJoin(read_queries, read_indexed, dim, settings, on_home_rows)
        for query_rows, indexed_rows, same, home in plan.joins:
            join.join(query_rows, indexed_rows, same, home, depth=1)
        q, r = join.found()
        return q, r, join.stats
    query_needed = np.unique(np.concatenate([j[0] for j in plan.joins]))
    indexed_needed = np.unique(np.concatenate([j[1] for j in plan.joins]))
    if one_source:
        query_needed = indexed_needed = np.union1d(query_needed, indexed_needed)
        queries = indexed = read_indexed(query_needed)
    else:
        queries, indexed = read_queries(query_needed), read_indexed(indexed_needed)
    join = PartitionedJoin(as_reader(queries), as_reader(indexed), dim, settings, on_home_rows)
    for query_rows, indexed_rows, same, home in plan.joins:
        join.join(
            np.searchsorted(query_needed, query_rows),
            np.searchsorted(indexed_needed, indexed_rows),
            same,
            home,
            depth=1,
        )
    q, r = join.found()
    return query_needed[q], indexed_needed[r], join.stats


class UnitRunner(Protocol):
    """Runs units elsewhere (an engine) and keeps their plans and pairs where a rerun finds them."""

    def saved_plans(self, settings: PartitionSettings, rows: int) -> int | None: ...
    def save_plans(
        self, plans: list[UnitPlan], settings: PartitionSettings, rows: int, partitioning: Partitioning | None
    ) -> int: ...
    def saved_partitioning(self) -> Partitioning | None: ...
    def run(
        self, count: int, dim: int, settings: PartitionSettings
    ) -> list[tuple[np.ndarray, np.ndarray, PartitionStats]]: ...


def partitioned_matches(
    read_queries: RowReader,
    query_count: int,
    read_indexed: RowReader,
    indexed_count: int,
    dim: int,
    settings: PartitionSettings,
    same: bool = False,
    on_home_rows: Callable[[int], None] | None = None,
    units: UnitRunner | None = None,
) -> tuple[np.ndarray, np.ndarray, PartitionStats, Partitioning | None]:
    """(query row, indexed row) with cosine >= threshold, the statistics, and the first split (which `find` keeps
    for `dedup add`). `same`: queries and indexed rows are one set. With `units` the units run through it (an
    engine, resumable); otherwise here, one after the other."""
    stats = PartitionStats()
    count = units.saved_plans(settings, query_count) if units else None
    if count is None:
        plans, stats, partitioning = plan_units(
            read_queries, query_count, read_indexed, indexed_count, dim, settings, same
        )
    elif units is not None:
        partitioning = units.saved_partitioning()
    if units is None:  # the readers are the caller's: in memory, or a memory-mapped store read unit by unit
        results = [
            run_unit(plan, read_queries, read_indexed, dim, settings, same, on_home_rows, gather=False)
            for plan in plans
        ]
    else:
        if count is None:
            count = units.save_plans(plans, settings, query_count, partitioning)
            del plans
        results = units.run(count, dim, settings)
    for _, _, unit_stats in results:
        stats.add(unit_stats)
    stats.timings_s = {k: round(v, 3) for k, v in stats.timings_s.items()}
    return (
        np.concatenate([np.zeros(0, np.int64), *(q for q, _, _ in results)]).astype(np.int64),
        np.concatenate([np.zeros(0, np.int64), *(r for _, r, _ in results)]).astype(np.int64),
        stats,
        partitioning,
    )
