"""Confirming black-box generations against the training set through the pipeline's own embedding store.

A generation flagged by the clique filter is embedded with the embedder that built the store, its nearest
training samples are found with faiss, and each candidate is checked with the tiled l2 distance at the
generation's resolution: within delta, the training sample counts as extracted. The store already holds
every training image, so no second pass over the shards is needed except to read the few candidates back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dedup.attack.distances import tiled_l2
from dedup.embedders import Embedder
from dedup.errors import SettingsError
from dedup.io.store import EmbeddingStore

Place = tuple[str, int]  # (shard, sample_index)
ImageLoader = Callable[[list[Place], int], np.ndarray]  # places, side -> (n, side, side, 3) in [0, 1]


@dataclass
class Match:
    generation: int  # position in the generations given
    shard: str
    sample_index: int
    key: str
    tiled_l2: float


def images_from_shards(places: list[Place], side: int) -> np.ndarray:
    """The training images at `places`, resized to side x side, in [0, 1] (the default loader)."""
    from dedup.attack.training_data import load_images  # the one reader of training images for the attacks

    images = load_images(places, side).images
    return ((images.transpose(0, 2, 3, 1) + 1) / 2).clip(0, 1)


def embed_generations(embedder: Embedder, generations: np.ndarray) -> np.ndarray:
    images = [Image.fromarray((np.clip(g, 0, 1) * 255).round().astype(np.uint8)) for g in generations]
    return np.asarray(embedder.embed([embedder.prepare(image) for image in images]), np.float32)


def check_embedder_matches(store: EmbeddingStore, embedder: Embedder) -> None:
    made_with = (store.read_spec() or {}).get("embedder")
    if made_with != embedder.spec():
        raise SettingsError(
            f"{store.root} was embedded with {made_with}, but the attack was given {embedder.spec()}; "
            "confirm with the embedder settings of the dedup run that built the store"
        )


def top_rows(embeddings, queries: np.ndarray, count: int, chunk: int = 262_144) -> np.ndarray:
    """(queries, count) rows of `embeddings` (an array or a memory-mapped RowStack) with the largest inner
    products, best first; -1 where the store has fewer rows. Exact, with memory bounded by `chunk` rows
    (faiss's ResultHeap merges the chunks' results)."""
    import faiss

    queries = np.ascontiguousarray(queries, np.float32)
    heap = faiss.ResultHeap(len(queries), count, keep_max=True)
    for start in range(0, len(embeddings), chunk):
        block = np.ascontiguousarray(embeddings[start : start + chunk], np.float32)
        scores, rows = faiss.knn(queries, block, min(count, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, np.where(rows >= 0, rows + start, -1))
    heap.finalize()
    return heap.I


def nearest_training_images(
    generations: np.ndarray,
    store_dir: str | Path,
    embedder: Embedder,
    grid: int = 4,
    candidates: int = 5,
    load_images: ImageLoader = images_from_shards,
    chunk: int = 262_144,
) -> list[Match]:
    """For each generation (n, H, W, 3) in [0, 1], the training image nearest by tiled l2 among the
    `candidates` nearest in the store: the generation is a copy of it when that distance is within delta."""
    if len(generations) == 0:
        return []
    store = EmbeddingStore(store_dir)
    check_embedder_matches(store, embedder)
    loaded = store.load(max_in_memory_bytes=0)  # memory-mapped: searched `chunk` rows at a time
    nearest = top_rows(loaded.embeddings, embed_generations(embedder, generations), candidates, chunk)
    shards = loaded.metadata["shard"].to_pylist()
    sample_indices = loaded.metadata["sample_index"].to_pylist()
    keys = loaded.metadata["key"].to_pylist()
    places = sorted({(shards[row], sample_indices[row]) for row in nearest.ravel() if row >= 0})
    side = generations.shape[1]
    training = dict(zip(places, load_images(places, side)))
    matches = []
    for position, rows in enumerate(nearest):
        rows = [row for row in rows if row >= 0]
        distances = [
            float(tiled_l2(generations[position], training[(shards[row], sample_indices[row])], grid)) for row in rows
        ]
        row = rows[int(np.argmin(distances))]
        matches.append(Match(position, shards[row], sample_indices[row], keys[row], min(distances)))
    return matches
