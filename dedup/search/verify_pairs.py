"""Of `find` and `dedup add`: the borderline embedding pairs (cosine between find.verify_threshold and find.threshold)
verified by local features, reading their images again from the shards (dedup/search/local_features.py)."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from dedup.io.imaging import UnreadableImage, open_image
from dedup.io.reader import batched, iter_selected
from dedup.progress import Reporter
from dedup.search import local_features
from dedup.search.signals import SignalPairs
from dedup.settings import FindSettings


def verify_borderline(found: SignalPairs, metadata: pa.Table, settings: FindSettings, reporter: Reporter) -> dict:
    """Turn found.pairs["borderline"] into the "verified" signal: the pairs whose inliers reach
    settings.verify_inliers. Returns what find.json records of it."""
    a, b = found.pairs.pop("borderline", (np.zeros(0, np.int64), np.zeros(0, np.int64)))
    similarity = found.similarity.pop("borderline", np.zeros(0, np.float32))
    if not len(a):
        return {"candidates": 0, "checked": 0, "verified": 0, "seconds": 0.0}
    started, candidates = time.perf_counter(), len(a)
    chosen = local_features.strongest_per_row(a, b, similarity, settings.verify_per_row)
    a, b, similarity = a[chosen], b[chosen], similarity[chosen]
    rows = np.unique(np.concatenate([a, b]))
    try_mirror = local_features.rank_in_rows(a, b, similarity) < settings.verify_mirror_per_row
    mirror = set(np.unique(a[try_mirror]).tolist())
    features_of = _features_of_rows(rows, metadata, reporter, mirror)
    inliers, mirrored = local_features.pair_inliers(
        a, b, features_of, threads=os.cpu_count() or 1, enough=settings.verify_inliers, mirror=try_mirror
    )
    good = inliers >= settings.verify_inliers
    found.pairs["verified"] = (a[good], b[good])
    found.similarity["verified"] = similarity[good]
    found.inliers["verified"] = inliers[good]
    info = {
        "candidates": candidates,
        "checked": len(a),
        "verified": int(good.sum()),
        "mirror_images": len(mirror),
        "mirror_checked": int(mirrored.sum()),
        "mirror_verified": int((mirrored & good).sum()),
        "unreadable_rows": len(rows) - len(features_of),
        "seconds": round(time.perf_counter() - started, 3),
    }
    reporter.info(f"find: {info['verified']} of {len(a)} borderline pairs verified by local features")
    return info


def _features_of_rows(
    rows: np.ndarray, metadata: pa.Table, reporter: Reporter, mirror: set[int]
) -> dict[int, local_features.Features]:
    """The keypoints of `rows`, read again from the shards; of those in `mirror`, of their mirror images too."""
    shards = metadata["shard"].take(pa.array(rows)).to_pylist()
    indices = metadata["sample_index"].take(pa.array(rows)).to_pylist()
    row_of = {(shard, index): int(row) for row, shard, index in zip(rows, shards, indices) if shard is not None}
    features_of: dict[int, local_features.Features] = {}

    def extract(sample) -> None:
        try:
            row = row_of[(sample.shard, sample.index)]
            features_of[row] = local_features.features(open_image(sample.files)[0], mirrored=row in mirror)
        except UnreadableImage:
            pass

    with (
        reporter.task("find: local features", total=len(row_of), unit="images") as progress,
        ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool,
    ):
        for batch in batched(iter_selected(list(row_of)), 64):
            list(pool.map(extract, batch))
            progress.advance(len(batch))
    return features_of
