"""Pairs of low-detail images (text, digits, icons on flat backgrounds) confirmed pixel by pixel.

Perceptual hashes and learned descriptors summarise an image by its coarse structure, and images that are
mostly flat background share it: two different numbers in the same font, or one icon in two colours, hash
alike. For a pair of two such images, a match counts only when their small colour thumbnails agree within a
tolerance (thumbnails: dedup/io/imaging.py; against the other's flips and quarter turns too, as PDQ matches them): re-encoded copies do,
different content does not. Measured in docs/quality.md."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FLAT_LEVELS = 3  # gray levels from one value that still count as a flat background (rendered, not photographed)
FLAT_SHARE = 0.5  # an image at least this flat is low-detail (1.5 % of Flickr8k photos and 1.3 % of CIFAR-10 are)
AGREEMENT_PERCENTILE = 99.5
CONFIRM_PHASH_RADIUS, CONFIRM_PDQ_RADIUS = 2, 20  # stricter than the signals': "2207" and "2237" are 4 and 28 apart
CONFIRM_COLOUR_LEVELS = 8  # largest difference of the mean colours, per channel
THUMB_SIDE = 16
THUMB_VALUES = THUMB_SIDE * THUMB_SIDE * 3


def is_low_detail(thumbs: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """bool (rows,): at least FLAT_SHARE of the thumbnail within FLAT_LEVELS gray levels of one value."""
    out = np.zeros(len(thumbs), dtype=bool)
    window = 2 * FLAT_LEVELS + 1
    for start in range(0, len(thumbs), chunk):
        part = np.asarray(thumbs[start : start + chunk])
        gray = np.rint(part.astype(np.float32).mean(axis=3)).astype(np.int64).reshape(len(part), -1)
        counts = np.bincount((gray + 256 * np.arange(len(part))[:, None]).ravel(), minlength=256 * len(part))
        cumulative = np.concatenate([np.zeros((len(part), 1)), counts.reshape(len(part), 256).cumsum(axis=1)], axis=1)
        near = cumulative[:, window:] - cumulative[:, :-window]  # pixels within the window around each level
        out[start : start + len(part)] = near.max(axis=1) >= FLAT_SHARE * gray.shape[1]
    return out


def _dihedral(thumbs: np.ndarray) -> list[np.ndarray]:
    turns = [np.rot90(thumbs, k, axes=(1, 2)) for k in range(4)]
    return turns + [t[:, :, ::-1] for t in turns]


def disagreement(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """float (pairs,): the 99.5th percentile of the absolute pixel difference, at the best of the second
    thumbnail's eight flips and quarter turns."""
    if not len(first):
        return np.zeros(0, dtype=np.float32)
    first = first.astype(np.int16).reshape(len(first), -1)
    best = np.full(len(first), np.inf, dtype=np.float32)
    for variant in _dihedral(second):
        difference = np.abs(first - variant.astype(np.int16).reshape(len(first), -1))
        best = np.minimum(best, np.percentile(difference, AGREEMENT_PERCENTILE, axis=1))
    return best


def unconfirmed(
    a: np.ndarray, b: np.ndarray, first: LowDetailEvidence, second: LowDetailEvidence, tolerance: float,
    chunk: int = 100_000,
) -> np.ndarray:  # fmt: skip
    """bool (pairs,): pairs of two low-detail images that nothing confirms. A pair is confirmed when its
    thumbnails agree within `tolerance`, or when both hashes agree (pHash and PDQ within their usual radii)
    and so do the mean colours: small images (CIFAR's 32 px) resized change their thumbnails more than
    different text does, but keep their hashes and colour; different icons share a pHash, not a colour."""
    out = first.low[a] & second.low[b]
    for start in range(0, len(a), chunk):
        both = np.flatnonzero(out[start : start + chunk]) + start
        if not len(both):
            continue
        x, y = a[both], b[both]
        agree = disagreement(first.thumbs[x], second.thumbs[y]) <= tolerance
        agree |= _hashes_and_colour_agree(first, second, x, y)
        out[both] = ~agree
    return out


def _hashes_and_colour_agree(first: LowDetailEvidence, second: LowDetailEvidence, x: np.ndarray, y: np.ndarray):
    from dedup.search import matching

    if first.pdq is None or second.pdq is None:
        return np.zeros(len(x), dtype=bool)
    phash = first.phash_present[x] & second.phash_present[y]
    phash &= matching.hamming_between(first.phash[x], second.phash[y]) <= CONFIRM_PHASH_RADIUS
    pdq = np.unpackbits(first.pdq[x] ^ second.pdq[y][:, :1], axis=2).sum(axis=2).min(axis=1) <= CONFIRM_PDQ_RADIUS
    colour = np.abs(
        first.thumbs[x].reshape(len(x), -1, 3).mean(axis=1) - second.thumbs[y].reshape(len(y), -1, 3).mean(axis=1)
    )
    return phash & pdq & (colour.max(axis=1) <= CONFIRM_COLOUR_LEVELS)


@dataclass
class LowDetailEvidence:
    """What the check reads of a set of samples."""

    low: np.ndarray  # bool (rows,)
    thumbs: np.ndarray  # uint8 (rows, 16, 16, 3)
    phash: np.ndarray  # uint64 (rows,)
    phash_present: np.ndarray  # bool (rows,)
    pdq: np.ndarray | None  # uint8 (rows, 8, 32)


def thumbnail_matches(
    queries: np.ndarray, query_low: np.ndarray, indexed: np.ndarray, indexed_low: np.ndarray, tolerance: float
) -> tuple[np.ndarray, np.ndarray]:
    """(query row, indexed row) of low-detail images whose thumbnails agree within `tolerance`, the query's
    flips and quarter turns included: what finds re-encoded copies of images the hashes cannot tell apart.
    A faiss range search on the raw thumbnails gives a superset (a pair within tolerance at the 99.5th
    percentile is within this root-mean-square bound), which the percentile then confirms."""
    import faiss

    q_rows, i_rows = np.flatnonzero(query_low), np.flatnonzero(indexed_low)
    if not len(q_rows) or not len(i_rows):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    index = faiss.IndexFlatL2(THUMB_VALUES)
    index.add(np.ascontiguousarray(indexed[i_rows].reshape(len(i_rows), -1), dtype=np.float32))
    bound = THUMB_VALUES * (tolerance**2 + (1 - AGREEMENT_PERCENTILE / 100) * 255**2)
    found_q, found_i = [], []
    for variant in _dihedral(queries[q_rows]):
        limits, _, labels = index.range_search(
            np.ascontiguousarray(variant.reshape(len(q_rows), -1), dtype=np.float32), bound
        )
        counts: np.ndarray = np.asarray(limits, dtype=np.int64)[1:] - np.asarray(limits, dtype=np.int64)[:-1]
        found_q.append(np.repeat(np.arange(len(q_rows)), counts))
        found_i.append(labels.astype(np.int64))
    q, i = np.concatenate(found_q), np.concatenate(found_i)
    agree = disagreement(queries[q_rows[q]], indexed[i_rows[i]]) <= tolerance
    pairs = np.unique(np.stack([q_rows[q[agree]], i_rows[i[agree]]], axis=1), axis=0).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


def thumbnail_pairs(thumbs: np.ndarray, low: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), a < b, within one set: `thumbnail_matches` of the set against itself."""
    q, i = thumbnail_matches(thumbs, low, thumbs, low, tolerance)
    keep = q < i
    return q[keep], i[keep]
