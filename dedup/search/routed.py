"""New rows searched through a run's kept partitioning: what makes `dedup add` cost what its increment costs.

`find`'s partitioned search splits the run's vectors once at the top (k-means centroids; each row's home
partition and the bisectors it lies near) and keeps that split in the run folder (`partitioning.npz`). An
increment routes only its new rows through the same centroids, then joins, partition by partition, the new rows
with the rows that share their home (earlier and new), and across each border they lie near with the rows near
the same border on its other side: the joins `find` would have made, restricted to pairs with a new row. The
earlier rows' places do not depend on the new ones, so the kept split, extended by the new rows, stays the
split of every row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dedup.io.atomic import atomic_open
from dedup.search.partitioned import (
    Assignment,
    Buckets,
    Join,
    Partitioning,
    PartitionSettings,
    RowReader,
    assign,
    block_matches,
    near_buckets,
    reach_of,
)


@dataclass
class KeptPartitioning:
    """The top split of a self-join over rows 0..rows-1, as kept in a run folder, with what it was made for."""

    centroids: np.ndarray
    rows: Assignment
    threshold: float
    boundary: float

    def save(self, path: str | Path) -> None:
        with atomic_open(path, "wb") as handle:
            np.savez(
                handle,
                centroids=self.centroids,
                home=self.rows.home,
                near_row=self.rows.near_row,
                near_partition=self.rows.near_partition,
                threshold=self.threshold,
                boundary=self.boundary,
            )

    @classmethod
    def load(cls, path: str | Path) -> KeptPartitioning | None:
        if not Path(path).exists():
            return None
        with np.load(path) as saved:
            return cls(
                saved["centroids"],
                Assignment(saved["home"], saved["near_row"], saved["near_partition"]),
                float(saved["threshold"]),
                float(saved["boundary"]),
            )

    @classmethod
    def of(cls, partitioning: Partitioning, settings: PartitionSettings) -> KeptPartitioning:
        return cls(partitioning.centroids, partitioning.indexed, settings.threshold, settings.boundary)

    def serves(self, settings: PartitionSettings, dim: int) -> bool:
        return (
            self.threshold == settings.threshold
            and self.boundary == settings.boundary
            and self.centroids.shape[1] == dim
        )

    def first(self, rows: int) -> KeptPartitioning:
        """The split of rows 0..rows-1 only (an increment killed after it extended the split is searched again)."""
        keep = self.rows.near_row < rows
        assignment = Assignment(self.rows.home[:rows], self.rows.near_row[keep], self.rows.near_partition[keep])
        return KeptPartitioning(self.centroids, assignment, self.threshold, self.boundary)

    def extended(self, new: Assignment, start: int) -> KeptPartitioning:
        """With rows start.. placed as `new` says (its near rows counted from `start`)."""
        rows = len(self.rows.home) + len(new.home)
        row_type = np.int32 if rows < np.iinfo(np.int32).max else np.int64
        assignment = Assignment(
            np.concatenate([self.rows.home, new.home]),
            np.concatenate([self.rows.near_row.astype(row_type), new.near_row.astype(row_type) + start]),
            np.concatenate([self.rows.near_partition, new.near_partition]),
        )
        return KeptPartitioning(self.centroids, assignment, self.threshold, self.boundary)


@dataclass
class RoutedMatches:
    across: tuple[np.ndarray, np.ndarray]  # (earlier row, new row) with cosine >= threshold
    within: tuple[np.ndarray, np.ndarray]  # (new row, larger new row)
    new: Assignment  # where the new rows fell (rows counted from the first new row)
    joins: int
    products: int
    seconds: float


GATHER_ROWS = 8_192  # rows (both sides) of the joins across borders read at once: reused memory, no page faults


def routed_matches(
    read: RowReader, rows: int, kept: KeptPartitioning, dim: int, settings: PartitionSettings
) -> RoutedMatches:
    """Pairs with cosine >= threshold that involve a row from `kept`'s end to `rows`, over rows read by `read`
    (global row numbers)."""
    started = time.perf_counter()
    start, partitions = len(kept.rows.home), len(kept.centroids)
    new_rows = np.arange(start, rows, dtype=np.int64)
    new = assign(read, new_rows, kept.centroids, reach_of(settings, dim))
    earlier_rows = np.arange(start, dtype=np.int64)
    earlier_home, new_home = Buckets(kept.rows.home, earlier_rows, partitions), Buckets(new.home, new_rows, partitions)
    earlier_near, new_near = near_buckets(kept.rows, earlier_rows, partitions), near_buckets(new, new_rows, partitions)
    homes: list[Join] = []
    for p in new_home.nonempty():
        homes += [(new_home[p], earlier_home[p], False, True), (new_home[p], new_home[p], True, True)]
    borders: list[Join] = []
    for key in new_near.nonempty():
        i, j = divmod(int(key), partitions)
        borders.append((new_near[key], earlier_near[j * partitions + i], False, False))
        if i < j:
            borders.append((new_near[key], new_near[j * partitions + i], False, False))
    joins = [join for join in homes + borders if len(join[0]) and len(join[1])]
    q, r = _matches(read, joins, settings.threshold)
    is_across = r < start
    is_within = ~is_across & (q != r)
    a, b = np.minimum(q[is_within], r[is_within]), np.maximum(q[is_within], r[is_within])
    packed = np.unique(a * rows + b)  # a self-join's blocks on the diagonal give a pair in both orders
    return RoutedMatches(
        (r[is_across], q[is_across]),
        (packed // rows, packed % rows),
        new,
        len(joins),
        sum(len(join[0]) * len(join[1]) for join in joins),
        time.perf_counter() - started,
    )


def _matches(read: RowReader, joins: list[Join], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(query row, indexed row) of every join, its two sides read together with other joins' (a read per join
    of a few rows costs more than its products)."""
    q_parts, r_parts = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for group in _groups(joins, GATHER_ROWS):
        queries = read(np.concatenate([join[0] for join in group]))
        indexed = read(np.concatenate([join[1] for join in group]))
        q_at, r_at = 0, 0
        for query_rows, indexed_rows, same, _ in group:
            found_q, found_r = block_matches(
                queries[q_at : q_at + len(query_rows)], indexed[r_at : r_at + len(indexed_rows)], threshold, same
            )
            q_parts.append(query_rows[found_q])
            r_parts.append(indexed_rows[found_r])
            q_at, r_at = q_at + len(query_rows), r_at + len(indexed_rows)
    return np.concatenate(q_parts).astype(np.int64), np.concatenate(r_parts).astype(np.int64)


def _groups(joins: list[Join], rows: int):
    group: list[Join] = []
    size = 0
    for join in joins:
        group.append(join)
        size += len(join[0]) + len(join[1])
        if size >= rows:
            yield group
            group, size = [], 0
    if group:
        yield group
