"""Partitioned exact search: the similarity join for collections too large for one exact search.

faiss k-means splits the indexed vectors into partitions of ~1,024 (at most 1,024 of them, or sqrt(N) if
more: `partition_count`); each vector has one *home*, its nearest centroid. Duplicates with the same home
are found by joining each partition with itself. A pair whose members have different homes i and j lies
across the hyperplane bisecting the two centroids, and both members lie near it; so every vector also notes
the neighbouring partitions whose bisector it is near, and the vectors of i near the (i, j) bisector are
joined with the vectors of j near it. Every join that is still large is partitioned again the same way;
small ones are exact: blocks of one side times the other, one BLAS matrix product each, thresholded, and the
many joins of a few rows (most joins across borders) in padded batches (`batched_matches`).

"Near": a duplicate at cosine t lies sqrt(2 - 2t) away in a direction unrelated to the partitions, which
moves its distance to a hyperplane by about sqrt(2 - 2t) / sqrt(dim). A vector is near a bisector when
its distance, (s_i - s_j) / |c_i - c_j| with s the cosines to the centroids, is at most `boundary` such
displacements. Larger `boundary` finds more of the pairs that straddle boundaries and costs more;
`benchmarks/find_scale.py` measures the recall against exact search.

SemDeDup's k-means + intra-cluster search is the `boundary = 0` case, which misses the cross-cluster pairs.
After the first split the joins are grouped into units of work that run apart (`dedup/search/partition_units.py`):
here, one after the other, or on an engine (`dedup/stages/find_units.py`).
Vectors are read through `read(rows) -> float32 array`, so a memory-mapped store is never loaded whole.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import faiss
import numpy as np

RowReader = Callable[[np.ndarray], np.ndarray]
ROUTE_CHUNK = 131_072
QUERY_BLOCK = 2_048
SELF_BLOCK = 512  # a self-join computes its upper triangle in blocks of this many rows
SMALL_SIDE = 64  # a join with both sides at most this long waits to be computed in a batch of such joins
BATCH_ROWS = 32_768  # padded rows (both sides) a batch of small joins holds: 64 MiB of 512-d float32 a side
MAX_DEPTH = 8
DIRECT_PRODUCTS = 4 * 1_024**2  # a join this small is cheaper to compute whole than to partition
# in high dimensions a far centroid's bisector can pass close by: look well beyond the nearest few, and
# further among more partitions (the recall each bought: docs/benchmarks.md, find)
NEIGHBOURS_LOOKED_AT = 32
NEIGHBOURS_SHARE = 32  # ... or one in this many of the centroids, if more


@dataclass
class PartitionSettings:
    threshold: float
    leaf_size: int = 1_024  # joins with at most this many indexed vectors are searched exactly
    branching: int = 1_024  # most partitions a join is split into below sqrt(rows) (wide and shallow costs least)
    boundary: float = 2.0  # typical duplicate displacements from a bisector within which a vector is "near" it
    seed: int = 0
    unit_rows: int = 262_144  # rows a unit of work reads into memory (float32: 2 KiB a 512-d row)


@dataclass
class PartitionStats:
    joins: int = 0  # exact joins at the leaves
    products: int = 0  # similarities computed
    largest: int = 0
    timings_s: dict = field(default_factory=lambda: {"kmeans": 0.0, "route": 0.0, "search": 0.0})

    def add_time(self, step: str, started: float) -> None:
        self.timings_s[step] += time.perf_counter() - started

    def add(self, other: PartitionStats) -> None:
        self.joins += other.joins
        self.products += other.products
        self.largest = max(self.largest, other.largest)
        for step, seconds in other.timings_s.items():
            self.timings_s[step] = self.timings_s.get(step, 0.0) + seconds


def reach_of(settings: PartitionSettings, dim: int) -> float:
    """How far from a bisector a vector counts as near it: `boundary` typical duplicate displacements."""
    return settings.boundary * math.sqrt(max(0.0, 2.0 - 2.0 * settings.threshold)) / math.sqrt(dim)


def as_reader(vectors: np.ndarray) -> RowReader:
    return lambda rows: np.ascontiguousarray(vectors[rows], dtype=np.float32)


def partition_count(rows: int, settings: PartitionSettings) -> int:
    """Partitions of about `leaf_size`, at most `branching` or sqrt(rows) if more. Routing costs rows x
    partitions, and the joins across borders grow with the partitions' size, rows / partitions: the two balance
    near sqrt(rows) (at 1M, 977 partitions of 1,024; at 10M, 3,162 of ~3,200, each split again)."""
    return min(max(settings.branching, math.isqrt(rows)), math.ceil(rows / settings.leaf_size), rows // 64)


def train_centroids(vectors: RowReader, rows: np.ndarray, dim: int, partitions: int, seed: int) -> np.ndarray:
    """Spherical k-means on a sample of 64 points a centroid (plenty for partitioning)."""
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(rows, min(len(rows), partitions * 64), replace=False))
    kmeans = faiss.Kmeans(
        dim, partitions, niter=6, seed=seed, spherical=True, max_points_per_centroid=64, verbose=False
    )
    kmeans.train(vectors(sample))
    return np.asarray(kmeans.centroids)


@dataclass
class Assignment:
    home: np.ndarray  # partition of each row
    near_row: np.ndarray  # position of a row near a bisector ...
    near_partition: np.ndarray  # ... and the partition on its other side


def assign(vectors: RowReader, rows: np.ndarray, centroids: np.ndarray, reach: float) -> Assignment:
    """Each row's home partition, and the other partitions among its nearest (NEIGHBOURS_LOOKED_AT, or one in
    NEIGHBOURS_SHARE of the centroids) whose bisector with the home lies within `reach` of it."""
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    k = min(max(NEIGHBOURS_LOOKED_AT, len(centroids) // NEIGHBOURS_SHARE), len(centroids))
    reach_of = reach * np.sqrt(np.maximum(0.0, 2.0 - 2.0 * (centroids @ centroids.T))).astype(np.float32)
    homes, near_rows, near_parts = [], [], []
    for start in range(0, len(rows), ROUTE_CHUNK):
        sims, ids = index.search(vectors(rows[start : start + ROUTE_CHUNK]), k)
        home = ids[:, 0]
        near = sims[:, 1:] >= sims[:, :1] - reach_of[home[:, None], ids[:, 1:]]
        position, column = np.nonzero(near)
        homes.append(home.astype(np.int32))
        near_rows.append((position + start).astype(np.int64 if len(rows) >= np.iinfo(np.int32).max else np.int32))
        near_parts.append(ids[position, column + 1].astype(np.int32))
    return Assignment(np.concatenate(homes), np.concatenate(near_rows), np.concatenate(near_parts))


@dataclass
class Partitioning:
    """A split: its centroids, and where its indexed rows and its queries fall (the same for a self-join)."""

    centroids: np.ndarray
    indexed: Assignment
    queries: Assignment


class Buckets:
    """`members` grouped by a bucket number in 0..count-1, without a Python list of `count` arrays
    (bucket numbers of neighbouring-partition pairs run to partitions squared)."""

    def __init__(self, bucket_of: np.ndarray, members: np.ndarray, count: int):
        order = np.argsort(bucket_of, kind="stable")
        self.members = members[order]
        self.bounds = np.searchsorted(bucket_of[order], np.arange(count + 1))

    def __getitem__(self, bucket: int) -> np.ndarray:
        return self.members[self.bounds[bucket] : self.bounds[bucket + 1]]

    def nonempty(self) -> np.ndarray:
        return np.flatnonzero(np.diff(self.bounds))


def near_buckets(assignment: Assignment, rows: np.ndarray, partitions: int) -> Buckets:
    """`rows` near a bisector, bucketed by (home i, other side j) as i * partitions + j (< 2^20 at 1,024)."""
    return Buckets(
        assignment.home[assignment.near_row] * partitions + assignment.near_partition,
        rows[assignment.near_row],
        partitions * partitions,
    )


def block_matches(
    queries: np.ndarray, indexed: np.ndarray, threshold: float, same: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(query position, indexed position) with inner product >= threshold, by blocks of BLAS products.
    With `same` (queries is indexed) only blocks on or above the diagonal are computed."""
    q_parts, r_parts = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    block = SELF_BLOCK if same else QUERY_BLOCK
    for start in range(0, len(queries), block):
        first = start if same else 0
        similarity = queries[start : start + block] @ indexed[first:].T
        hot = np.flatnonzero(similarity.max(axis=1) >= threshold)  # hits are rare: scan only rows with one
        q, r = np.nonzero(similarity[hot] >= threshold)
        q_parts.append(hot[q].astype(np.int64) + start)
        r_parts.append(r.astype(np.int64) + first)
    return np.concatenate(q_parts), np.concatenate(r_parts)


def batched_matches(
    read_queries: RowReader, read_indexed: RowReader, joins: list[tuple[np.ndarray, np.ndarray, bool]], threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """(query row, indexed row) with inner product >= threshold of many small joins (query rows, indexed rows,
    same) at once: the joins, padded to powers of two, are stacked and multiplied as one batch of matrices a
    shape, so a join of a few rows costs microseconds, not the tens of a matrix product of its own (the
    joins across borders are mostly that small). A self-join (`same`) keeps only pairs above its diagonal."""
    q_parts, r_parts = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    shape_of = [(_padded(len(q)), _padded(len(r))) for q, r, _ in joins]
    for shape in set(shape_of):
        members = [join for join, of in zip(joins, shape_of) if of == shape]
        query_index, query_valid = _stacked([q for q, _, _ in members], shape[0])
        indexed_index, indexed_valid = _stacked([r for _, r, _ in members], shape[1])
        queries, indexed = _read_stacked(read_queries, query_index), _read_stacked(read_indexed, indexed_index)
        similarity = np.matmul(queries, indexed.transpose(0, 2, 1))
        hit = (similarity >= threshold) & query_valid[:, :, None] & indexed_valid[:, None, :]
        same = np.array([s for _, _, s in members])
        if same.any():
            hit[same] &= np.triu(np.ones(shape, bool), k=1)
        k, q, r = np.nonzero(hit)
        q_parts.append(query_index[k, q])
        r_parts.append(indexed_index[k, r])
    return np.concatenate(q_parts).astype(np.int64), np.concatenate(r_parts).astype(np.int64)


def _padded(length: int) -> int:
    return max(4, 1 << (length - 1).bit_length())


def _stacked(row_lists: list[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row lists as a (count, width) array, each padded by repeating its last row; and which entries are real."""
    lengths = np.array([len(rows) for rows in row_lists])
    starts = np.cumsum(lengths) - lengths
    column = np.arange(width)
    index = np.concatenate(row_lists)[starts[:, None] + np.minimum(column[None, :], lengths[:, None] - 1)]
    return index, column[None, :] < lengths[:, None]


def _read_stacked(read: RowReader, index: np.ndarray) -> np.ndarray:
    rows, position = np.unique(index, return_inverse=True)
    return read(rows)[position.reshape(index.shape)]


Join = tuple[np.ndarray, np.ndarray, bool, bool]  # query rows, indexed rows, same (a self-join), home


class PartitionedJoin:
    """All (query row, indexed row) pairs with cosine >= threshold, found partition by partition."""

    def __init__(
        self,
        read_queries: RowReader,
        read_indexed: RowReader,
        dim: int,
        settings: PartitionSettings,
        on_home_rows: Callable[[int], None] | None = None,
    ):
        self.read_queries, self.read_indexed, self.dim = read_queries, read_indexed, dim
        self.settings = settings
        self.on_home_rows = on_home_rows
        self.stats = PartitionStats()
        self.reach = reach_of(settings, dim)
        self.found_q: list[np.ndarray] = [np.zeros(0, np.int64)]
        self.found_r: list[np.ndarray] = [np.zeros(0, np.int64)]
        self.small: list[tuple[np.ndarray, np.ndarray, bool]] = []  # small joins waiting for their batch
        self.small_rows = 0

    def found(self) -> tuple[np.ndarray, np.ndarray]:
        self._flush_small()
        return np.concatenate(self.found_q).astype(np.int64), np.concatenate(self.found_r).astype(np.int64)

    def join(self, query_rows: np.ndarray, indexed_rows: np.ndarray, same: bool, home: bool, depth: int) -> None:
        """`same`: the two sides are the same rows (a self-join); `home`: this join is on the path that
        covers every query once (progress counts it)."""
        if len(query_rows) == 0 or len(indexed_rows) == 0:
            return
        parts = self.split(query_rows, indexed_rows, same, depth)
        if parts is None and max(len(query_rows), len(indexed_rows)) <= SMALL_SIDE:
            self._add_small(query_rows, indexed_rows, same, home)
            return
        if parts is None:
            self._leaf(query_rows, indexed_rows, same, home)
            return
        for _, (queries, indexed, part_same, part_home) in parts:
            self.join(queries, indexed, part_same, home and part_home, depth + 1)

    def split(
        self, query_rows: np.ndarray, indexed_rows: np.ndarray, same: bool, depth: int
    ) -> list[tuple[int, Join]] | None:
        """The join's sub-joins, each tagged with the partition of its queries (home joins first); None when
        the join is small enough to compute whole."""
        partitioning = self.partition(query_rows, indexed_rows, same, depth)
        return None if partitioning is None else self.joins_of(partitioning, query_rows, indexed_rows, same)

    def partition(
        self, query_rows: np.ndarray, indexed_rows: np.ndarray, same: bool, depth: int
    ) -> Partitioning | None:
        """Centroids for the join's indexed rows, and where both sides fall; None when the join is small enough
        to compute whole."""
        partitions = partition_count(len(indexed_rows), self.settings)
        small = len(indexed_rows) <= self.settings.leaf_size or len(query_rows) * len(indexed_rows) <= DIRECT_PRODUCTS
        if small or partitions < 2 or depth >= MAX_DEPTH:
            return None
        started = time.perf_counter()
        centroids = train_centroids(self.read_indexed, indexed_rows, self.dim, partitions, self.settings.seed + depth)
        self.stats.add_time("kmeans", started)
        started = time.perf_counter()
        indexed = assign(self.read_indexed, indexed_rows, centroids, self.reach)
        queries = indexed if same else assign(self.read_queries, query_rows, centroids, self.reach)
        self.stats.add_time("route", started)
        return Partitioning(centroids, indexed, queries)

    def joins_of(
        self, partitioning: Partitioning, query_rows: np.ndarray, indexed_rows: np.ndarray, same: bool
    ) -> list[tuple[int, Join]]:
        """A partition's home join for each partition, and a join across each border near which queries lie."""
        started = time.perf_counter()
        partitions, queries, indexed = len(partitioning.centroids), partitioning.queries, partitioning.indexed
        indexed_home = Buckets(indexed.home, indexed_rows, partitions)
        query_home = indexed_home if same else Buckets(queries.home, query_rows, partitions)
        query_near = near_buckets(queries, query_rows, partitions)
        indexed_near = query_near if same else near_buckets(indexed, indexed_rows, partitions)
        self.stats.add_time("route", started)
        parts = [(p, (query_home[p], indexed_home[p], same, True)) for p in range(partitions)]
        for key in query_near.nonempty():
            i, j = divmod(int(key), partitions)
            if not same or i < j:
                parts.append((i, (query_near[key], indexed_near[j * partitions + i], False, False)))
        return parts

    def _add_small(self, query_rows: np.ndarray, indexed_rows: np.ndarray, same: bool, home: bool) -> None:
        self.small.append((query_rows, indexed_rows, same))
        self.small_rows += _padded(len(query_rows)) + _padded(len(indexed_rows))
        self._count(len(query_rows), len(indexed_rows), same, home)
        if self.small_rows >= BATCH_ROWS:
            self._flush_small()

    def _flush_small(self) -> None:
        if not self.small:
            return
        started = time.perf_counter()
        q, r = batched_matches(self.read_queries, self.read_indexed, self.small, self.settings.threshold)
        self.found_q.append(q)
        self.found_r.append(r)
        self.small, self.small_rows = [], 0
        self.stats.add_time("search", started)

    def _count(self, queries: int, indexed: int, same: bool, home: bool) -> None:
        """A join computed (or queued in a batch): its statistics, and progress if it is a home join."""
        self.stats.joins += 1
        self.stats.products += queries * indexed // (2 if same else 1)
        self.stats.largest = max(self.stats.largest, indexed)
        if home and self.on_home_rows:
            self.on_home_rows(queries)

    def _leaf(self, query_rows: np.ndarray, indexed_rows: np.ndarray, same: bool, home: bool) -> None:
        started = time.perf_counter()
        indexed = self.read_indexed(indexed_rows)
        queries = indexed if same else self.read_queries(query_rows)
        q, r = block_matches(queries, indexed, self.settings.threshold, same)
        self.found_q.append(query_rows[q])
        self.found_r.append(indexed_rows[r])
        self.stats.add_time("search", started)
        self._count(len(query_rows), len(indexed_rows), same, home)
