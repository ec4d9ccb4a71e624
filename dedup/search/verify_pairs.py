"""Of `find` and `dedup add`, what reads the images of found pairs again from the shards: the borderline embedding
pairs (cosine between find.verify_threshold and find.threshold) verified by local features
(dedup/search/local_features.py), and every pair's relation (dedup/search/relations.py), decided from the same
alignment."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from dedup.io.imaging import UnreadableImage, open_image
from dedup.io.reader import batched, iter_selected
from dedup.progress import Reporter
from dedup.search import local_features, regions, relations, small_images
from dedup.search.components import pair_keys
from dedup.search.relations import Evidence
from dedup.search.signals import SignalPairs, cosine
from dedup.settings import FindSettings
from dedup.settings.run import RELATIONS

Features = dict[int, local_features.Features]


class Proposals(NamedTuple):
    """Pairs region queries proposed: rows a and b, their whole images' cosine, the region of a that proposed b,
    and how many regions an image has."""

    a: np.ndarray
    b: np.ndarray
    similarity: np.ndarray
    region: np.ndarray
    regions_an_image: int


def region_proposals(
    found: SignalPairs,
    region_vectors: np.ndarray,
    mirror_vectors: np.ndarray | None,
    embeddings: np.ndarray,
    low_detail: np.ndarray,
    settings: FindSettings,
) -> Proposals:
    """The pairs a region of one image proposes (dedup/search/regions.py) that no signal has found yet: (a, b,
    their whole images' cosine, the region of a), each unordered pair once; none between two low-detail images
    (flat backgrounds: their crops look alike)."""
    assert settings.region_threshold is not None
    a, b, score, region = regions.region_candidates(
        region_vectors, embeddings, settings.region_threshold, settings.region_per_row, mirror_vectors
    )
    return new_proposals(found, a, b, score, region, embeddings, low_detail, region_vectors.shape[1])


def new_proposals(
    found: SignalPairs,
    a: np.ndarray,
    b: np.ndarray,
    score: np.ndarray,
    region: np.ndarray,
    embeddings: np.ndarray,
    low_detail: np.ndarray,
    regions_an_image: int,
) -> Proposals:
    """Of region candidates (a, b, score, region of a): each unordered pair once, the strongest, none that a signal
    found already, none between two low-detail images."""
    keys = pair_keys(a, b)
    strongest_first = np.argsort(-score, kind="stable")
    _, first = np.unique(keys[strongest_first], return_index=True)
    keep = np.zeros(len(a), bool)
    keep[strongest_first[first]] = True  # the better of (a, b) and (b, a)
    known = [pair_keys(x, y) for name, (x, y) in found.pairs.items() if name != "borderline"]
    if known:
        keep &= ~np.isin(keys, np.concatenate(known))
    keep &= ~(low_detail[a] & low_detail[b])
    a, b, region = a[keep], b[keep], region[keep]
    return Proposals(a, b, cosine(embeddings, embeddings, a, b), region, regions_an_image)


def verify_borderline(
    found: SignalPairs,
    metadata: pa.Table,
    settings: FindSettings,
    reporter: Reporter,
    features_of: Features,
    proposed: Proposals | None = None,
    low_detail: np.ndarray | None = None,
) -> dict:
    """Turn found.pairs["borderline"] into the "verified" signal: the pairs whose inliers reach
    settings.verify_inliers (their evidence kept in found.evidence, the rows' features in `features_of`).
    `proposed`: pairs region queries proposed (region_proposals), checked too, each with the mirror image.
    `low_detail`: the rows that are mostly flat background; their thumbnails are never confirmed by pixels alone
    (a digit's strokes correlate with another digit's). Returns what find.json records of it."""
    a, b = found.pairs.pop("borderline", (np.zeros(0, np.int64), np.zeros(0, np.int64)))
    similarity = found.similarity.pop("borderline", np.zeros(0, np.float32))
    if not len(a) and (proposed is None or not len(proposed.a)):
        return {"candidates": 0, "checked": 0, "verified": 0, "seconds": 0.0}
    started, candidates = time.perf_counter(), len(a)
    chosen = local_features.strongest_per_row(a, b, similarity, settings.verify_per_row)
    a, b, similarity = a[chosen], b[chosen], similarity[chosen]
    try_mirror = local_features.rank_in_rows(a, b, similarity) < settings.verify_mirror_per_row
    region = np.full(len(a), -1, np.int64)  # the region of a that proposed the pair; -1: a borderline pair
    if proposed is not None:
        new = ~np.isin(pair_keys(proposed.a, proposed.b), pair_keys(a, b))
        a, b, similarity, region = (
            np.concatenate([x, y[new]]) for x, y in zip((a, b, similarity, region), proposed[:4])
        )
        try_mirror = np.concatenate([try_mirror, np.ones(int(new.sum()), bool)])
    from_regions = region >= 0
    rows = np.unique(np.concatenate([a, b]))
    mirror = set(np.unique(a[try_mirror]).tolist())
    read_features(rows, metadata, reporter, mirror, features_of)
    read_s = time.perf_counter() - started
    enough = settings.verify_inliers  # a pair with fewer is not kept: it is not fitted when fewer keypoints match
    evidence = relations.pair_evidence(
        a, b, features_of, enough, os.cpu_count() or 1, try_mirror, measure=settings.relations, least=enough
    )
    inliers = np.fromiter((e.inliers for e in evidence), np.int32, len(evidence))
    short = np.flatnonzero(from_regions & (inliers < enough))
    match_s = time.perf_counter() - started - read_s
    aligned = through_regions(
        a[short],
        b[short],
        region[short],
        proposed.regions_an_image if proposed else 0,
        metadata,
        reporter,
        features_of,
        settings,
    )
    for index, better in zip(short.tolist(), aligned):
        if better.inliers > inliers[index]:
            evidence[index], inliers[index] = better, better.inliers
    mirrored = np.fromiter((e.mirror_tried for e in evidence), bool, len(evidence))
    good = (inliers >= enough) & (~from_regions | regions.covers_one(evidence, settings.relations))
    unconfirmed = ~good if low_detail is None else ~good & ~low_detail[a] & ~low_detail[b]
    compared = compare_thumbnails(a, b, similarity, unconfirmed, evidence, features_of)
    good[compared] = True
    for index in np.flatnonzero(good & (a > b)).tolist():  # a proposed pair, the region's image second: a < b
        one = evidence[index]
        evidence[index] = dataclasses.replace(one, coverage_a=one.coverage_b, coverage_b=one.coverage_a)
    a, b = np.minimum(a, b), np.maximum(a, b)
    found.pairs["verified"] = (a[good], b[good])
    found.similarity["verified"] = similarity[good]
    found.inliers["verified"] = inliers[good]
    found.evidence.update(
        (key, evidence[index]) for key, index in zip(pair_keys(a[good], b[good]).tolist(), np.flatnonzero(good))
    )
    info = {
        "candidates": candidates,
        "checked": len(a),
        "verified": int(good.sum()),
        "mirror_images": len(mirror),
        "mirror_checked": int(mirrored.sum()),
        "mirror_verified": int((mirrored & good).sum()),
        "region_checked": int(from_regions.sum()),
        "region_verified": int((from_regions & good).sum()),
        "thumbnails_checked": int(sum(not np.isnan(e.dense) for e in evidence)),
        "thumbnails_verified": len(compared),
        "unreadable_rows": len(rows) - len(features_of),
        "seconds": round(time.perf_counter() - started, 3),
        "seconds_reading": round(read_s, 3),  # images read again, decoded, their keypoints found
        "seconds_matching": round(match_s, 3),  # the pairs' keypoints matched and aligned
    }
    reporter.info(f"find: {info['verified']} of {len(a)} borderline pairs verified by local features")
    return info


def compare_thumbnails(
    a: np.ndarray,
    b: np.ndarray,
    similarity: np.ndarray,
    unconfirmed: np.ndarray,
    evidence: list[Evidence],
    features_of: Features,
) -> np.ndarray:
    """The indices of the unconfirmed pairs of two thumbnails (too small for keypoints) that their pixels confirm
    (dedup/search/small_images.py); each compared pair's evidence gets its `dense` correlation."""
    confirmed = []
    for index in np.flatnonzero(unconfirmed & (similarity >= small_images.LEAST_COSINE)).tolist():
        first, second = features_of.get(int(a[index])), features_of.get(int(b[index]))
        if first is None or second is None or first.small is None or second.small is None:
            continue
        if not (
            small_images.is_small(first.small, first.small_scale)
            and small_images.is_small(second.small, second.small_scale)
        ):
            continue
        dense, mirrored = small_images.agreement(first.small, second.small)
        evidence[index] = dataclasses.replace(evidence[index], dense=dense, mirrored=mirrored)
        if small_images.confirms(dense, first.small, second.small):
            confirmed.append(index)
    return np.asarray(confirmed, np.int64)


def through_regions(
    a: np.ndarray,
    b: np.ndarray,
    region: np.ndarray,
    count: int,
    metadata: pa.Table,
    reporter: Reporter,
    features_of: Features,
    settings: FindSettings,
) -> list[Evidence]:
    """The evidence of pairs (a, b) aligned through the region of a that proposed them: a photo pasted at half
    scale into another gets few of the whole image's keypoints; its region, read at full size, gets them all."""
    if not len(a):
        return []
    wanted: dict[int, set[int]] = {}
    for row, one in zip(a.tolist(), region.tolist()):
        wanted.setdefault(row, set()).add(one)
    crops: Features = {}
    key_of: dict[tuple[int, int], int] = {}
    lock = threading.Lock()

    def extract(row: int, image) -> None:
        for one in wanted[row] if row in features_of else ():
            box = regions.region_boxes(image.width, image.height, count)[one]
            found = local_features.crop_features(image, box, features_of[row], mirrored=True)
            with lock:  # images are read in threads
                key_of[(row, one)] = key = -(len(key_of) + 1)  # below every row: no clash in one features dict
                crops[key] = found

    rows = np.asarray(sorted(wanted), np.int64)
    read_images(rows, metadata, reporter, "find: region keypoints", extract, 2 * local_features.MAX_SIDE)
    unread = np.iinfo(np.int64).min  # no features under it: the pair's evidence is UNREAD
    keys = np.asarray([key_of.get((row, one), unread) for row, one in zip(a.tolist(), region.tolist())], np.int64)
    enough = settings.verify_inliers
    return relations.pair_evidence(
        keys, b, {**features_of, **crops}, enough, os.cpu_count() or 1, measure=settings.relations, least=enough
    )


def relate_pairs(
    pairs: pa.Table,
    metadata: pa.Table | None,
    settings: FindSettings,
    reporter: Reporter,
    features_of: Features,
    known: dict[int, Evidence],
    copy_signals: frozenset[str] = frozenset(),
) -> tuple[pa.Table, dict]:
    """pairs.parquet's rows with each pair's relation and its evidence. Exact pairs are `exact`; the others are
    aligned (each row's `relate_per_row` most similar partners; evidence `known` from verification is reused) and
    decided (relations.decide; `copy_signals`: relations.copy_signals); a pair not examined (past that budget, with
    no images to read: `metadata` None, or with find.relations off) is `unknown`."""
    started = time.perf_counter()
    if not settings.relations:  # verification's evidence then holds inliers alone: nothing to decide from
        metadata, known = None, {}
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    similarity = pairs["similarity"].to_numpy()
    keys = pair_keys(a, b)
    found: list[Evidence | None] = [known.get(key) for key in keys.tolist()]
    exact = np.asarray(pairs["signal"].to_pylist(), dtype=object) == "exact"
    todo = np.flatnonzero(~exact & np.array([e is None for e in found], bool))
    if metadata is not None and len(todo):
        todo = todo[local_features.strongest_per_row(a[todo], b[todo], similarity[todo], settings.relate_per_row)]
        try_mirror = local_features.rank_in_rows(a[todo], b[todo], similarity[todo]) < settings.verify_mirror_per_row
        rows = np.unique(np.concatenate([a[todo], b[todo]]))
        read_features(rows, metadata, reporter, set(np.unique(a[todo][try_mirror]).tolist()), features_of)
        measured = relations.pair_evidence(
            a[todo], b[todo], features_of, settings.verify_inliers, threads=os.cpu_count() or 1, mirror=try_mirror
        )
        for index, one in zip(todo.tolist(), measured):
            found[index] = one
    else:
        todo = todo[:0]
    signals = pairs["signal"].to_pylist()
    named = [
        "exact" if is_exact else relations.UNKNOWN if one is None else relations.decide(one, signal in copy_signals)
        for is_exact, one, signal in zip(exact.tolist(), found, signals)
    ]
    table = pairs.set_column(pairs.column_names.index("inliers"), "inliers", evidence_column(found, "inliers"))
    for name in relations.EVIDENCE_COLUMNS:
        table = table.append_column(name, evidence_column(found, name))
    table = table.append_column("mirrored", pa.array([bool(e and e.mirrored) for e in found], pa.bool_()))
    table = table.append_column("relation", pa.array(named, pa.string()))
    info = {
        "examined": len(todo),
        "pairs_by_relation": {name: named.count(name) for name in RELATIONS},
        "seconds": round(time.perf_counter() - started, 3),
    }
    reporter.info(f"find: relations of {len(named)} pairs: {info['pairs_by_relation']}")
    return table, info


def evidence_column(found: list[Evidence | None], name: str) -> pa.Array:
    if name == "inliers":
        return pa.array([-1 if e is None else e.inliers for e in found], pa.int32())
    return pa.array([float("nan") if e is None else getattr(e, name) for e in found], pa.float32())


def read_features(rows: np.ndarray, metadata: pa.Table, reporter: Reporter, mirror: set[int], features_of: Features):
    """The keypoints of `rows` not yet in `features_of`, read again from the shards into it; of those in
    `mirror`, of their mirror images too."""
    rows = np.asarray([row for row in rows.tolist() if row not in features_of], dtype=np.int64)

    def extract(row: int, image) -> None:
        features_of[row] = local_features.features(image, mirrored=row in mirror)

    read_images(rows, metadata, reporter, "find: local features", extract, local_features.MAX_SIDE)


def read_images(
    rows: np.ndarray, metadata: pa.Table, reporter: Reporter, label: str, on_image, decode_size: int
) -> None:
    """Each readable image of `rows`, read again from the shards, handed to on_image(row, image) in threads; a JPEG
    decoded at the smallest DCT scale whose sides are at least `decode_size` (keypoints are found at most
    local_features.MAX_SIDE large: a 1,500-px photo need not be decoded whole)."""
    if not len(rows):
        return
    shards = metadata["shard"].take(pa.array(rows)).to_pylist()
    indices = metadata["sample_index"].take(pa.array(rows)).to_pylist()
    row_of = {(shard, index): int(row) for row, shard, index in zip(rows, shards, indices) if shard is not None}

    def one(sample) -> None:
        try:
            on_image(row_of[(sample.shard, sample.index)], open_image(sample.files, decode_size=decode_size)[0])
        except UnreadableImage:
            pass

    with (
        reporter.task(label, total=len(row_of), unit="images") as progress,
        ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool,
    ):
        pending: list = []
        for batch in batched(iter_selected(list(row_of)), 64):  # the next batch read while the last is worked on
            submitted = [pool.submit(one, sample) for sample in batch]
            for future in pending:
                future.result()
            progress.advance(len(pending))
            pending = submitted
        for future in pending:
            future.result()
        progress.advance(len(pending))
