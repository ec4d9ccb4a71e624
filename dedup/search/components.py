"""Connected components of the duplicate graph, for any number of rows, without holding the graph.

Edges are read in chunks (from memory or from pairs.parquet, batch by batch), and each row keeps one label,
its component's smallest row, in an int32/int64 array that is memory-mapped on disk when it would not fit
(1 billion rows: 4 GiB). Each pass hooks, for every edge, the larger of its two roots under the smaller,
then pointer jumping flattens every chain; passes repeat until no edge joins two roots. Labels only ever
decrease, so this ends, and at the end every edge's ends share their smallest reachable row.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

EdgeChunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
IN_MEMORY_ROWS = 200_000_000


def label_array(rows: int, folder: str | Path | None = None) -> np.ndarray:
    dtype = np.int32 if rows < np.iinfo(np.int32).max else np.int64
    if rows <= IN_MEMORY_ROWS:
        return np.arange(rows, dtype=dtype)
    handle = tempfile.NamedTemporaryFile(prefix="labels-", suffix=".bin", dir=folder, delete=False)
    labels = np.memmap(handle.name, dtype=dtype, mode="w+", shape=(rows,))
    for start in range(0, rows, 1 << 26):
        stop = min(rows, start + (1 << 26))
        labels[start:stop] = np.arange(start, stop, dtype=dtype)
    return labels


def roots(labels: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    found = labels[nodes]
    while True:
        above = labels[found]
        if np.array_equal(above, found):
            return found
        found = above


def flatten(labels: np.ndarray, chunk: int = 1 << 26) -> None:
    """Point every row straight at its root (labels[r] <= r always, so one sweep upwards suffices)."""
    for start in range(0, len(labels), chunk):
        block = np.asarray(labels[start : start + chunk])
        labels[start : start + chunk] = roots(labels, block)


def component_labels(rows: int, edge_chunks: EdgeChunks, folder: str | Path | None = None) -> np.ndarray:
    """The smallest row of each row's component. `edge_chunks()` yields (a, b) arrays and can be called
    again for another pass (it re-reads the edges)."""
    labels = label_array(rows, folder)
    while True:
        hooked = 0
        for a, b in edge_chunks():
            root_a, root_b = roots(labels, np.asarray(a, np.int64)), roots(labels, np.asarray(b, np.int64))
            lower, upper = np.minimum(root_a, root_b), np.maximum(root_a, root_b)
            joins = lower != upper
            if joins.any():
                np.minimum.at(labels, upper[joins], lower[joins].astype(labels.dtype))
                hooked += int(joins.sum())
        flatten(labels)
        if hooked == 0:
            return labels


def pair_keys(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One int64 per unordered pair of rows (smaller row in the high half): for set operations on edges."""
    return np.minimum(a, b).astype(np.int64) * (1 << 32) + np.maximum(a, b)


def unique_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each unordered pair of distinct rows once, as (smaller row, larger row)."""
    keep = a != b
    packed = np.unique(pair_keys(a[keep], b[keep]))
    return packed >> 32, packed & 0xFFFFFFFF


def in_chunks(a: np.ndarray, b: np.ndarray, size: int = 1 << 22) -> EdgeChunks:
    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(a), size):
            yield a[start : start + size], b[start : start + size]

    return chunks


def parquet_chunks(path: str | Path, size: int = 1 << 22) -> EdgeChunks:
    """Edges streamed from a parquet file with columns a and b (pairs.parquet), batch by batch."""
    import pyarrow.parquet as pq

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=size, columns=["a", "b"]):
            yield batch.column(0).to_numpy(), batch.column(1).to_numpy()

    return chunks
