"""Duplicate pairs of every signal, within one set of samples (`find`) or between two (`purge`), each pair
with its cosine similarity computed once; the one rule that decides which signals an embedding candidate
satisfies; and, for each sample, its strongest partner.

The searches only select candidates: the similarity stored for a pair is one exact float32 dot product of
the two embeddings, whichever index (flat, IVF, partitioned) found it, so it does not depend on the search.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from dedup.io.store import EmbeddingStore, LoadedStore
from dedup.search import low_detail, matching
from dedup.search.relations import Evidence
from dedup.settings import FindSettings

SIGNALS = (
    "exact",
    "phash",
    "pdq",
    "thumbnail",
    "embedding",
    "verified",
    "embedding+phash",
)  # in order of strength: a pair is labelled by the first


@dataclass
class Samples:
    """What the signals read of a set of samples: content hashes, perceptual hashes, embeddings."""

    sha256: np.ndarray  # object: hex digests, None where unknown
    phash: np.ndarray  # uint64
    phash_present: np.ndarray  # bool: clip-retrieval metadata has no perceptual hashes
    embeddings: np.ndarray  # float32 (rows, dim), or a RowStack read like one
    pdq: np.ndarray | None = None  # uint8 (rows, 8, 32): PDQ of each image and its variants; None in older stores
    thumbs: np.ndarray | None = None  # uint8 (rows, 16, 16, 3): for the low-detail check; None in older stores

    @classmethod
    def of(
        cls, metadata: pa.Table, embeddings: np.ndarray, pdq: np.ndarray | None = None, thumbs: np.ndarray | None = None
    ) -> Samples:
        phash = metadata["phash"].fill_null(0).to_numpy().astype(np.uint64)
        present = ~metadata["phash"].is_null().to_numpy(zero_copy_only=False)
        return cls(np.asarray(metadata["sha256"].to_pylist(), dtype=object), phash, present, embeddings, pdq, thumbs)

    @classmethod
    def from_store(cls, store: EmbeddingStore, loaded: LoadedStore, settings: FindSettings) -> Samples:
        """The samples of a loaded store, with the PDQ hashes and thumbnails the settings' signals read."""
        checking = settings.low_detail_tolerance is not None
        pdq = store.pdq_hashes() if settings.pdq_radius is not None or checking else None
        thumbs = store.thumbnails() if checking else None
        return cls.of(loaded.metadata, loaded.embeddings, pdq, thumbs)

    def low_detail_rows(self) -> np.ndarray:
        """bool (rows,): images that are mostly flat background; all False without thumbnails."""
        if self.thumbs is None:
            return np.zeros(len(self.sha256), dtype=bool)
        return low_detail.is_low_detail(self.thumbs)

    def low_detail_evidence(self, low: np.ndarray) -> low_detail.LowDetailEvidence:
        assert self.thumbs is not None
        return low_detail.LowDetailEvidence(low, self.thumbs, self.phash, self.phash_present, self.pdq)


@dataclass
class SignalPairs:
    """(a, b) pairs for each signal (a < b within one set; query row, indexed row between two), with the
    cosine of the embedding signals' pairs (the hash signals' are computed when the pairs are merged)."""

    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    similarity: dict[str, np.ndarray] = field(default_factory=dict)
    index: matching.IndexChoice | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    unconfirmed: dict[str, int] = field(default_factory=dict)  # low-detail pairs each signal lost to the check
    inliers: dict[str, np.ndarray] = field(default_factory=dict)  # of the verified pairs
    # relations.Evidence of each verified pair, by components.pair_keys
    evidence: dict[int, Evidence] = field(default_factory=dict)


def cosine(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Cosine of x[a[i]] and y[b[i]] (unit vectors): one float32 dot product a pair, in chunks small enough that
    their rows are gathered into memory the process already holds (a million-pair chunk, 1 GB of fresh pages,
    cost 6 s of page faults for 250,000 pairs; docs/quality.md)."""
    out = np.empty(len(a), dtype=np.float32)
    for start in range(0, len(a), chunk):
        part = slice(start, start + chunk)
        out[part] = np.einsum(
            "ij,ij->i", x[a[part]].astype(np.float32, copy=False), y[b[part]].astype(np.float32, copy=False)
        )
    return out


def signal_masks(
    similarity: np.ndarray, queries: Samples, indexed: Samples, a: np.ndarray, b: np.ndarray, settings: FindSettings
) -> dict[str, np.ndarray]:
    """Which embedding candidates each embedding-based signal keeps: `embedding` (cosine alone) and
    `embedding+phash` (a looser cosine and a looser Hamming distance that agree)."""
    masks = {}
    if settings.threshold is not None:
        masks["embedding"] = similarity >= settings.threshold
    if settings.verify_threshold is not None and settings.threshold is not None:  # verified by the find stage
        masks["borderline"] = (similarity >= settings.verify_threshold) & (similarity < settings.threshold)
    if settings.corroborate_threshold is not None:
        agree = (similarity >= settings.corroborate_threshold) & queries.phash_present[a] & indexed.phash_present[b]
        agree[agree] = (
            matching.hamming_between(queries.phash[a][agree], indexed.phash[b][agree]) <= settings.corroborate_radius
        )
        masks["embedding+phash"] = agree
    return masks


def exact_matches(queries: Samples, indexed: Samples) -> tuple[np.ndarray, np.ndarray]:
    """(query row, first indexed row with the same content hash)."""
    first_row: dict[str, int] = {}
    for row, digest in enumerate(indexed.sha256):
        if digest is not None:
            first_row.setdefault(digest, row)
    hits = [(i, first_row[d]) for i, d in enumerate(queries.sha256) if d is not None and d in first_row]
    return np.array([h[0] for h in hits], np.int64), np.array([h[1] for h in hits], np.int64)


def signal_pairs(
    queries: Samples,
    indexed: Samples | None,
    settings: FindSettings,
    on_batch=None,
    units=None,
    embedding_found: tuple[np.ndarray, np.ndarray, matching.IndexChoice] | None = None,
) -> SignalPairs:
    """Every signal's pairs among `queries` (indexed None: one set) or between `queries` and `indexed`.
    `embedding_found`: the embedding search's matches, where the caller found them its own way (`dedup add`
    through the run's kept partitioning); within one set, each pair once as (smaller, larger)."""
    same = indexed is None
    other = queries if indexed is None else indexed
    found = SignalPairs()
    if settings.exact:
        started = time.perf_counter()
        found.pairs["exact"] = matching.exact_pairs(queries.sha256) if same else exact_matches(queries, other)
        found.timings_s["exact"] = time.perf_counter() - started
    if settings.phash_radius is not None and (queries.phash_present.any() or not same):
        started = time.perf_counter()
        if same:
            found.pairs["phash"] = matching.phash_pairs(queries.phash, settings.phash_radius, queries.phash_present)
        else:
            q_rows, i_rows = np.flatnonzero(queries.phash_present), np.flatnonzero(other.phash_present)
            q, i = matching.phash_matches(queries.phash[q_rows], other.phash[i_rows], settings.phash_radius)
            found.pairs["phash"] = (q_rows[q], i_rows[i])
        found.timings_s["phash"] = time.perf_counter() - started
    if settings.pdq_radius is not None and queries.pdq is not None and other.pdq is not None:
        started = time.perf_counter()
        if same:
            found.pairs["pdq"] = matching.pdq_pairs(queries.pdq, settings.pdq_radius)
        else:
            found.pairs["pdq"] = matching.pdq_matches(queries.pdq, other.pdq[:, 0], settings.pdq_radius)
        found.timings_s["pdq"] = time.perf_counter() - started
    q_thumbs, o_thumbs = queries.thumbs, other.thumbs
    tolerance = settings.low_detail_tolerance if q_thumbs is not None and o_thumbs is not None else None
    if tolerance is not None:  # each set's low-detail rows once, for the thumbnail signal and the check
        low_q = queries.low_detail_rows()
        low_o = low_q if same else other.low_detail_rows()
    if tolerance is not None and q_thumbs is not None and o_thumbs is not None:
        started = time.perf_counter()
        found.pairs["thumbnail"] = (
            low_detail.thumbnail_pairs(q_thumbs, low_q, tolerance)
            if same
            else low_detail.thumbnail_matches(q_thumbs, low_q, o_thumbs, low_o, tolerance)
        )
        found.timings_s["thumbnail"] = time.perf_counter() - started
    threshold = settings.search_threshold()
    if threshold is not None and (len(queries.embeddings) > 1 or not same):
        started = time.perf_counter()
        if embedding_found is not None:
            a, b, found.index = embedding_found
        elif same:
            a, b, found.index = matching.embedding_pairs(queries.embeddings, threshold, settings, on_batch, units)
        else:
            a, b, found.index = matching.embedding_matches(queries.embeddings, other.embeddings, threshold, settings)
        similarity = cosine(queries.embeddings, other.embeddings, a, b)
        for signal, mask in signal_masks(similarity, queries, other, a, b, settings).items():
            found.pairs[signal] = (a[mask], b[mask])
            found.similarity[signal] = similarity[mask]
        found.timings_s["embedding"] = time.perf_counter() - started
    if tolerance is not None:
        started = time.perf_counter()
        first = queries.low_detail_evidence(low_q)
        second = first if same else other.low_detail_evidence(low_o)
        _check_low_detail(found, first, second, tolerance)
        found.timings_s["low_detail"] = time.perf_counter() - started
    return found


def _check_low_detail(
    found: SignalPairs, first: low_detail.LowDetailEvidence, second: low_detail.LowDetailEvidence, tolerance: float
) -> None:
    """Drop the pairs of two low-detail images that nothing confirms (every signal but exact and thumbnail). Where
    local features verify (find.verify_threshold), an unconfirmed embedding pair goes to them instead, as borderline
    pairs do: a crop of a photo on plain sand or snow moves its flat thumbnail, and its keypoints still agree."""
    for signal, (a, b) in list(found.pairs.items()):
        if signal in ("exact", "thumbnail", "borderline") or not len(a):
            continue
        drop = low_detail.unconfirmed(a, b, first, second, tolerance)
        if drop.any():
            similarity = found.similarity.get(signal)
            found.pairs[signal] = (a[~drop], b[~drop])
            if similarity is not None:
                found.similarity[signal] = similarity[~drop]
            to_verify = signal == "embedding" and "borderline" in found.pairs
            if to_verify and similarity is not None:  # local features decide, as for borderline pairs
                x, y = found.pairs["borderline"]
                found.pairs["borderline"] = (np.concatenate([x, a[drop]]), np.concatenate([y, b[drop]]))
                found.similarity["borderline"] = np.concatenate([found.similarity["borderline"], similarity[drop]])
        found.unconfirmed[signal] = int(drop.sum())


def stacked(found: SignalPairs) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All pairs of every signal as (a, b, signal code, similarity), codes in SIGNALS order (lower = stronger);
    similarity NaN where the pair's signal is a hash."""
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = [
        (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0, np.float32))
    ]
    for code, signal in enumerate(SIGNALS):
        if signal in found.pairs:
            a, b = found.pairs[signal]
            similarity = found.similarity.get(signal, np.full(len(a), np.nan, np.float32))
            parts.append((a, b, np.full(len(a), code, dtype=np.int8), similarity))
    a_all, b_all, codes, similarity = (np.concatenate(column) for column in zip(*parts))
    return a_all, b_all, codes, similarity


def with_similarity(similarity: np.ndarray, x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`similarity`, with the cosines not yet known (NaN: pairs of a hash signal) computed."""
    missing = np.flatnonzero(np.isnan(similarity))
    if len(missing):
        similarity = similarity.copy()
        similarity[missing] = cosine(x, y, a[missing], b[missing])
    return similarity


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
