"""Candidate duplicate pairs from each signal. Every function returns (a, b) index arrays with a < b.

- exact: equal content hashes (sha256 of the image bytes);
- phash: 64-bit perceptual hashes within a Hamming radius (faiss multi-index hashing, exact by the
  pigeonhole principle: with r differing bits, one of r + 1 disjoint bit blocks is identical);
- embedding: cosine similarity at or above a threshold: exact search up to `exact_search_max` vectors,
  the partitioned search of dedup/search/partitioned.py beyond (or faiss IVF when asked).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from dedup.search.components import unique_pairs
from dedup.settings import FindSettings

QUERY_BATCH = 16_384


def exact_pairs(sha256: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Star edges from the first sample of each content hash to the others (enough for connectivity)."""
    valid = np.flatnonzero(np.array([h is not None for h in sha256], dtype=bool))
    if len(valid) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    _, first, inverse = np.unique(sha256[valid].astype(str), return_index=True, return_inverse=True)
    heads = valid[first][inverse]
    duplicate = heads != valid
    return unique_pairs(heads[duplicate], valid[duplicate])


def hashes_to_bytes(phash: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(phash.astype(">u8")).view(np.uint8).reshape(-1, 8)


def hamming_between(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Elementwise Hamming distance of two arrays of 64-bit hashes."""
    xor = np.bitwise_xor(x, y).astype(np.uint64)
    return np.unpackbits(xor.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1).astype(np.int32)


def hamming(phash: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return hamming_between(phash[a], phash[b])


def binary_range_search(index, codes: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """(code row, indexed row) for every indexed code within `radius` bits of a code, in query batches."""
    q_parts, r_parts = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start in range(0, len(codes), QUERY_BATCH):
        lims, _, found = index.range_search(codes[start : start + QUERY_BATCH], radius + 1)  # keeps < radius + 1
        q_parts.append(np.repeat(np.arange(start, start + len(lims) - 1), np.diff(lims).astype(np.int64)))
        r_parts.append(found.astype(np.int64))
    return np.concatenate(q_parts), np.concatenate(r_parts)


def phash_matches(queries: np.ndarray, indexed: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """All (query row, indexed row) with Hamming distance <= radius."""
    if len(queries) == 0 or len(indexed) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    blocks = radius + 1
    index = faiss.IndexBinaryMultiHash(64, blocks, 64 // blocks)
    index.add(hashes_to_bytes(indexed))
    q, r = binary_range_search(index, hashes_to_bytes(queries), radius)
    within = hamming_between(queries[q], indexed[r]) <= radius
    return q[within], r[within]


def phash_pairs(phash: np.ndarray, radius: int, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs within `radius` bits among the rows where `present` is true."""
    valid = np.flatnonzero(present)
    q, r = phash_matches(phash[valid], phash[valid], radius)
    return unique_pairs(valid[q], valid[r])


def pdq_matches(variants: np.ndarray, indexed: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """All (query row, indexed row) where one of the query's PDQ variants (rows, 8, 32 bytes) lies within
    `radius` bits of the indexed row's own hash (rows, 32 bytes). Exact: the 256 bits are cut into chunks
    and each query also probes the buckets one flipped bit away, so a hash within `radius` of another shares
    a chunk up to one bit (pigeonhole) as long as radius < 2 x chunks."""
    if len(variants) == 0 or len(indexed) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    chunks = 16 if radius < 32 else 32
    index = faiss.IndexBinaryMultiHash(256, chunks, 256 // chunks)
    index.nflip = 1
    index.add(np.ascontiguousarray(indexed, dtype=np.uint8))
    variant, r = binary_range_search(index, np.ascontiguousarray(variants.reshape(-1, 32), dtype=np.uint8), radius)
    packed = np.unique(variant // variants.shape[1] * (1 << 32) + r)  # a pair found through several variants once
    return packed >> 32, packed & 0xFFFFFFFF


def pdq_pairs(pdq: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs within `radius` bits among rows of one set, either member's variants against the other's hash."""
    q, r = pdq_matches(pdq, pdq[:, 0], radius)
    return unique_pairs(q, r)


@dataclass
class IndexChoice:
    kind: str  # flat | partitioned | ivf
    nlist: int = 0
    nprobe: int = 0
    reason: str = ""
    partitioning: Any = field(default=None, repr=False)  # a partitioned self-join's KeptPartitioning (find keeps it)


def choose_index(rows: int, dim: int, settings: FindSettings) -> IndexChoice:
    if settings.index == "flat" or (settings.index == "auto" and rows <= settings.exact_search_max):
        check_memory(rows, dim, settings)
        return IndexChoice(
            "flat", reason=f"{rows} vectors <= exact_search_max {settings.exact_search_max}: exact search"
        )
    if settings.index in ("auto", "partitioned"):
        return IndexChoice(
            "partitioned",
            reason=f"{rows} vectors: partitioned exact search, partitions of "
            f"~{settings.leaf_size}, boundary {settings.boundary}",
        )
    check_memory(rows, dim, settings)
    # lists ~ sqrt(N * nprobe) balance the scan (N * nprobe / nlist per query) against the list lookup
    nlist = int(min(max(16, math.sqrt(rows * settings.nprobe)), max(1, rows // 39)))
    return IndexChoice(
        "ivf",
        nlist=nlist,
        nprobe=min(settings.nprobe, nlist),
        reason=f"{rows} vectors: IVF{nlist} with nprobe {min(settings.nprobe, nlist)}",
    )


def check_memory(rows: int, dim: int, settings: FindSettings) -> None:
    """flat and IVF indexes hold every vector in memory."""
    vector_bytes = rows * dim * 4
    if vector_bytes > settings.memory_budget_gb * 1024**3:
        raise MemoryError(
            f"{rows} x {dim} float32 embeddings need {vector_bytes / 1024**3:.1f} GiB, over the "
            f"{settings.memory_budget_gb} GiB budget; raise find.memory_budget_gb or use find.index = partitioned"
        )


HNSW_QUANTIZER_FROM = 1024  # lists; beyond this, finding a query's nearest lists by brute force costs too much


def build_index(embeddings: np.ndarray, choice: IndexChoice, seed: int = 0):
    dim = embeddings.shape[1]
    index: Any
    if choice.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        quantizer = "_HNSW32" if choice.nlist >= HNSW_QUANTIZER_FROM else ""
        index = faiss.index_factory(dim, f"IVF{choice.nlist}{quantizer},Flat", faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = seed
        ivf.cp.niter = 10
        ivf.cp.max_points_per_centroid = 64
        rng = np.random.default_rng(seed)
        sample_size = min(len(embeddings), choice.nlist * 64)
        sample = embeddings[np.sort(rng.choice(len(embeddings), sample_size, replace=False))]
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        ivf.nprobe = choice.nprobe
        if quantizer:
            hnsw: Any = faiss.downcast_index(ivf.quantizer)  # an IndexHNSWFlat
            hnsw.hnsw.efSearch = max(64, 4 * choice.nprobe)
    for start in range(0, len(embeddings), 262_144):
        index.add(np.ascontiguousarray(embeddings[start : start + 262_144], dtype=np.float32))
    return index


def range_pairs(
    index, queries: np.ndarray, threshold: float, offset: int = 0, on_batch=None
) -> tuple[np.ndarray, np.ndarray]:
    """All (query, hit) pairs with inner product >= threshold; query ids start at `offset`.
    `on_batch(n)` is called after each batch of n queries (progress)."""
    a_parts, b_parts = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    radius = np.nextafter(np.float32(threshold), np.float32(-np.inf))  # faiss keeps similarity > radius
    for start in range(0, len(queries), QUERY_BATCH):
        batch = np.ascontiguousarray(queries[start : start + QUERY_BATCH], dtype=np.float32)
        lims, _, found = index.range_search(batch, float(radius))
        counts = np.diff(lims).astype(np.int64)
        a_parts.append(np.repeat(np.arange(offset + start, offset + start + len(batch)), counts))
        b_parts.append(found.astype(np.int64))
        if on_batch:
            on_batch(len(batch))
    return np.concatenate(a_parts), np.concatenate(b_parts)


def partition_settings(threshold: float, settings: FindSettings):
    """The partitioned search's settings for a search at `threshold`."""
    from dedup.search.partitioned import PartitionSettings

    return PartitionSettings(
        threshold, leaf_size=settings.leaf_size, boundary=settings.boundary, unit_rows=settings.unit_rows
    )


def embedding_matches(
    queries: np.ndarray,
    indexed: np.ndarray,
    threshold: float,
    settings: FindSettings,
    on_batch=None,
    same: bool = False,
    units=None,
) -> tuple[np.ndarray, np.ndarray, IndexChoice]:
    """All (query row, indexed row) with cosine >= threshold, through an index chosen by size and budget.
    `same`: the queries are the indexed vectors (a self-join); `units`: where a partitioned search runs its
    units (`partition_units.UnitRunner`; default: here)."""
    if settings.threads:
        faiss.omp_set_num_threads(settings.threads)
    choice = choose_index(len(indexed), indexed.shape[1], settings)
    if choice.kind == "partitioned":
        from dedup.search import partition_units, partitioned
        from dedup.search.routed import KeptPartitioning

        options = partition_settings(threshold, settings)
        q, r, stats, partitioning = partition_units.partitioned_matches(
            partitioned.as_reader(queries),
            len(queries),
            partitioned.as_reader(indexed),
            len(indexed),
            indexed.shape[1],
            options,
            same=same,
            on_home_rows=on_batch,
            units=units,
        )
        if same and partitioning is not None:
            choice.partitioning = KeptPartitioning.of(partitioning, options)
        choice.reason += f" ({stats.joins} exact joins, {stats.products / max(len(queries), 1):.0f} products a query)"
        return q, r, choice
    index = build_index(indexed, choice)
    q, r = range_pairs(index, queries, threshold, on_batch=on_batch)
    return q, r, choice


def embedding_pairs(
    embeddings: np.ndarray, threshold: float, settings: FindSettings, on_batch=None, units=None
) -> tuple[np.ndarray, np.ndarray, IndexChoice]:
    a, b, choice = embedding_matches(embeddings, embeddings, threshold, settings, on_batch, same=True, units=units)
    a, b = unique_pairs(a, b)
    return a, b, choice
