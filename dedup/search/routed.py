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
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dedup.io.atomic import atomic_open
from dedup.search.components import unique_pairs
from dedup.search.partitioned import (
    QUERY_BLOCK,
    Assignment,
    Buckets,
    Partitioning,
    PartitionSettings,
    RowReader,
    as_reader,
    assign,
    block_matches,
    near_buckets,
    reach_of,
)

LARGE_PRODUCT = 4_096  # similarities from which a join's product is computed with its indexed rows first


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
        """The kept split; None if there is none or it cannot be read (it is only a shortcut: `add` then searches
        the way it does without one)."""
        if not Path(path).exists():
            return None
        try:
            with np.load(path) as saved:
                return cls(
                    saved["centroids"],
                    Assignment(saved["home"], saved["near_row"], saved["near_partition"]),
                    float(saved["threshold"]),
                    float(saved["boundary"]),
                )
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None

    @classmethod
    def of(cls, partitioning: Partitioning, settings: PartitionSettings) -> KeptPartitioning:
        return cls(partitioning.centroids, partitioning.indexed, settings.threshold, settings.boundary)

    def serves(self, settings: PartitionSettings) -> bool:
        return self.threshold == settings.threshold and self.boundary == settings.boundary

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


def routed_matches(
    read: RowReader, rows: int, kept: KeptPartitioning, dim: int, settings: PartitionSettings
) -> RoutedMatches:
    """Pairs with cosine >= threshold that involve a row from `kept`'s end to `rows`, over rows read by `read`
    (global row numbers). The new rows are held in memory; the earlier ones are read partition by partition,
    each once, and the rows near a border are taken from their partition's rows while these are in cache (read
    one by one from the store they cost more than their products)."""
    started = time.perf_counter()
    start, partitions = len(kept.rows.home), len(kept.centroids)
    new_rows = np.arange(start, rows, dtype=np.int64)
    new_vectors = read(new_rows)
    new = assign(as_reader(new_vectors), np.arange(len(new_rows)), kept.centroids, reach_of(settings, dim))
    earlier_rows = np.arange(start, dtype=np.int64)
    earlier_home, new_home = Buckets(kept.rows.home, earlier_rows, partitions), Buckets(new.home, new_rows, partitions)
    earlier_near, new_near = near_buckets(kept.rows, earlier_rows, partitions), near_buckets(new, new_rows, partitions)
    search = _Search(new_vectors, start, settings.threshold)
    for j, borders in _borders_by_partition(new_home, new_near, earlier_near, partitions):
        home = earlier_home[j]  # ascending: the rows near a border are found in it by bisection
        home_vectors = read(home)
        search.join(new_home[j], home, home_vectors)
        search.join(new_home[j], new_home[j], None, same=True)
        for i in borders:  # new rows of partition i near its border with j, earlier rows of j near it too
            queries, near = new_near[i * partitions + j], earlier_near[j * partitions + i]
            search.join(queries, near, home_vectors[np.searchsorted(home, near)])
            if i < j:
                search.join(queries, new_near[j * partitions + i], None)
    q, r = search.found()
    is_across = r < start
    return RoutedMatches(
        (r[is_across], q[is_across]),
        unique_pairs(q[~is_across], r[~is_across]),  # a self-join's diagonal blocks give both orders
        new,
        search.joins,
        search.products,
        time.perf_counter() - started,
    )


def _borders_by_partition(new_home: Buckets, new_near: Buckets, earlier_near: Buckets, partitions: int):
    """(j, [i, ...]) for every partition j that new rows live in or lie near: the partitions i whose new rows lie
    near their border with j, where rows of j lie near it too (or new rows, for i < j)."""
    keys = new_near.nonempty()
    i, j = np.divmod(keys, partitions)
    facing = j * partitions + i
    met = (np.diff(earlier_near.bounds)[facing] > 0) | ((i < j) & (np.diff(new_near.bounds)[facing] > 0))
    i, j = i[met], j[met]
    order = np.argsort(j, kind="stable")
    i, j = i[order], j[order]
    bounds = np.searchsorted(j, np.arange(partitions + 1))
    for p in np.union1d(new_home.nonempty(), j):
        yield int(p), i[bounds[p] : bounds[p + 1]].tolist()


class _Search:
    """The joins of one routed search: new rows (read from the increment in memory) against earlier rows (given
    read) or other new rows."""

    def __init__(self, new_vectors: np.ndarray, start: int, threshold: float):
        self.new_vectors, self.start, self.threshold = new_vectors, start, threshold
        self.q_parts, self.r_parts = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        self.joins = self.products = 0

    def join(self, queries: np.ndarray, indexed: np.ndarray, indexed_vectors: np.ndarray | None, same=False) -> None:
        """`queries` (new rows) against `indexed` (rows whose vectors are `indexed_vectors`, or new rows if None)."""
        if not len(queries) or not len(indexed):
            return
        query_vectors = self.new_vectors[queries - self.start]
        if indexed_vectors is None:
            indexed_vectors = query_vectors if same else self.new_vectors[indexed - self.start]
        self.joins += 1
        self.products += len(queries) * len(indexed)
        if same or len(queries) > QUERY_BLOCK:
            q, r = block_matches(query_vectors, indexed_vectors, self.threshold, same)
        else:  # most joins: a few new rows near a border; most find nothing
            many_first = len(queries) * len(indexed) >= LARGE_PRODUCT  # OpenBLAS: many rows by a few is faster
            similarity = indexed_vectors @ query_vectors.T if many_first else query_vectors @ indexed_vectors.T
            if similarity.max() < self.threshold:
                return
            hits = np.nonzero(similarity >= self.threshold)
            r, q = hits if many_first else hits[::-1]
        self.q_parts.append(queries[q])
        self.r_parts.append(indexed[r])

    def found(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.q_parts).astype(np.int64), np.concatenate(self.r_parts).astype(np.int64)
