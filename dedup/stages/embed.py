"""`embed`: per input shard, the content hash, perceptual hash and embedding of every sample's image.

One unit of work per shard; a unit writes part N of the embeddings store and its stats file last, so a
rerun skips the shards already done. Decoding runs in threads while the model embeds the previous batch.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from dedup.embedders import Embedder, embedder_from
from dedup.engine import LocalEngine, Unit, run_units
from dedup.errors import InputError, SettingsError
from dedup.io import tarspans
from dedup.io.atomic import remove_stale_temporaries
from dedup.io.imaging import THUMB_SIDE, UnreadableImage, caption_of, decode
from dedup.io.reader import Fault, Sample, batched, iter_source
from dedup.io.remote import RemoteReadError, RetryPolicy
from dedup.io.sources import expand_shards, fingerprint
from dedup.io.store import FAILURE_SCHEMA, METADATA_SCHEMA, EmbeddingStore
from dedup.progress import SILENT, Reporter
from dedup.search.regions import region_views
from dedup.settings import EmbedSettings

_EMBEDDER_CACHE: dict[str, Embedder] = {}
_EMBEDDER_LOCK = threading.Lock()


def cached_embedder(settings: EmbedSettings) -> Embedder:
    """One embedder per process and settings: a worker loads its model once, not once per shard (and workers
    on threads share it)."""
    key = json.dumps(asdict(settings), sort_keys=True)
    with _EMBEDDER_LOCK:
        if key not in _EMBEDDER_CACHE:
            _EMBEDDER_CACHE.clear()
            _EMBEDDER_CACHE[key] = embedder_from(settings)
        return _EMBEDDER_CACHE[key]


class _PartBuilder:
    """Accumulates one shard's rows, vectors and faults."""

    def __init__(self, url: str, part: int, embedder: Embedder, with_text: bool, regions: int = 0):
        self.url, self.part, self.embedder, self.with_text = url, part, embedder, with_text
        self.regions = regions  # crops embedded per image besides it, and its mirror image (dedup/search/regions.py)
        self.region_vectors: list[np.ndarray] = []
        self.mirror_vectors: list[np.ndarray] = []
        self.rows: dict[str, list] = {name: [] for name in METADATA_SCHEMA.names}
        self.vectors: list[np.ndarray] = []
        self.text_vectors: list[np.ndarray] = []
        self.failures: dict[str, list] = {name: [] for name in FAILURE_SCHEMA.names}
        self.shard_faults: list[str] = []
        self.pdq: list[np.ndarray] = []
        self.thumbs: list[np.ndarray] = []
        self.spans: list[tuple[int, int, int, int]] = []  # (sample index, start, end, payload) of each embedded sample
        self.lost: str | None = None  # a remote shard that failed on every try: nothing of it is kept

    def on_fault(self, fault: Fault) -> None:
        if fault.lost_connection:
            self.lost = fault.reason
        elif fault.key is None:
            self.shard_faults.append(fault.reason)
        else:
            self.add_failure(fault.key, fault.index, fault.reason)

    def add_failure(self, key: str, index: int | None, reason: str) -> None:
        for name, value in zip(FAILURE_SCHEMA.names, (key, self.url, self.part, index, reason)):
            self.failures[name].append(value)

    def add_batch(self, decoded: list[tuple]) -> None:
        good = [(sample, image, prepared) for sample, image, prepared, error in decoded if error is None]
        for sample, _, _, error in decoded:
            if error is not None:
                self.add_failure(sample.key, sample.index, error)
        if not good:
            return
        self.vectors.append(self.embedder.embed([prepared[0] for _, _, prepared in good]))
        if self.regions:
            views = self.embedder.embed([view for _, _, prepared in good for view in prepared[1]])
            views = views.reshape(len(good), self.regions + 1, -1).astype(np.float16)
            self.region_vectors.append(views[:, : self.regions])
            self.mirror_vectors.append(views[:, self.regions])
        captions = [caption_of(sample.files) for sample, _, _ in good]
        if self.with_text:
            texts = self.embedder.embed_texts(captions)
            assert texts is not None  # with_text is set only for an embedder of captions
            self.text_vectors.append(texts)
        for (sample, image, _), caption in zip(good, captions):
            values = (
                sample.key,
                self.url,
                self.part,
                sample.index,
                image.sha256,
                image.phash,
                image.width,
                image.height,
                caption,
            )
            for name, value in zip(METADATA_SCHEMA.names, values):
                self.rows[name].append(value)
            self.pdq.append(image.pdq)
            self.thumbs.append(image.thumb)
            self.spans.append(
                (sample.index, *(sample.span or (-1, -1)), sum(len(data) for data in sample.files.values()))
            )

    def forget(self) -> None:
        """Drop every row: a shard read only in part is recorded unreadable, never as a shorter shard."""
        self.rows = {name: [] for name in METADATA_SCHEMA.names}
        self.failures = {name: [] for name in FAILURE_SCHEMA.names}
        self.vectors, self.text_vectors, self.pdq, self.thumbs, self.spans = [], [], [], [], []
        self.region_vectors, self.mirror_vectors = [], []
        self.shard_faults = [f"unreadable: {self.lost} (tried again on the next run)"]

    def region_arrays(self) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
        """float16 (rows, regions, dim) and (rows, dim): the crops' and the mirror images' vectors; None when no
        region is embedded."""
        if not self.regions:
            return None, None
        if not self.region_vectors:
            dim = self.embedder.dim
            return np.zeros((0, self.regions, dim), np.float16), np.zeros((0, dim), np.float16)
        return np.concatenate(self.region_vectors), np.concatenate(self.mirror_vectors)

    def tables(self) -> tuple[np.ndarray, pa.Table, pa.Table, np.ndarray | None]:
        dim = self.embedder.dim
        vectors = np.concatenate(self.vectors) if self.vectors else np.zeros((0, dim), np.float32)
        text = (
            (np.concatenate(self.text_vectors) if self.text_vectors else np.zeros((0, dim), np.float32))
            if self.with_text
            else None
        )
        metadata = pa.table(self.rows, schema=METADATA_SCHEMA)
        failures = pa.table(self.failures, schema=FAILURE_SCHEMA)
        return vectors, metadata, failures, text


def embed_shard(url: str, part: int, store_root: str, settings: EmbedSettings) -> dict:
    """Embed one shard into part `part` of the store. Returns the part's stats."""
    started = time.perf_counter()
    embedder = cached_embedder(settings)
    store = EmbeddingStore(store_root)
    builder = _PartBuilder(
        url, part, embedder, with_text=settings.text and settings.embedder == "clip", regions=settings.regions
    )
    retry = RetryPolicy.of(settings)
    try:
        shard_fingerprint = fingerprint(url, retry).to_dict()
    except Exception as error:  # noqa: BLE001 - a shard that cannot even be looked at is unreadable, not fatal
        shard_fingerprint = {"size": None, "mtime": None, "etag": None}
        builder.on_fault(
            Fault(
                url,
                f"cannot open shard: {type(error).__name__}: {error}",
                lost_connection=isinstance(error, RemoteReadError),
            )
        )

    def decode_one(sample: Sample) -> tuple:
        try:
            image = decode(sample.files, settings.max_pixels, settings.decode_size)
            views = region_views(image.image, settings.regions) if settings.regions else []
            return sample, image, (embedder.prepare(image.image), [embedder.prepare(v) for v in views]), None
        except UnreadableImage as error:
            return sample, None, None, str(error)

    lookable = not builder.shard_faults and builder.lost is None
    samples = iter_source(url, builder.on_fault, settings.max_member_bytes, retry) if lookable else iter(())
    pending: list[Future] | None = None
    with ThreadPoolExecutor(max_workers=settings.decode_threads) as pool:
        for batch in batched(samples, settings.batch_size):
            submitted = [pool.submit(decode_one, sample) for sample in batch]
            if pending is not None:
                builder.add_batch([future.result() for future in pending])
            pending = submitted
        if pending is not None:
            builder.add_batch([future.result() for future in pending])

    if builder.lost is not None:
        builder.forget()
    vectors, metadata, failures, text = builder.tables()
    stats = {
        "shard": url,
        "part": part,
        "fingerprint": shard_fingerprint,
        "samples": len(metadata) + len(failures),
        "embedded": len(metadata),
        "failed": len(failures),
        "shard_faults": builder.shard_faults,
        "seconds": round(time.perf_counter() - started, 3),
        "retry_on_rerun": builder.lost is not None,
    }
    # where each sample lies in a plain local tar, so write copies byte ranges without scanning the shard
    spans = np.array(builder.spans, dtype=np.int64).reshape(-1, 4) if tarspans.is_plain_local_tar(url) else None
    pdq = np.stack(builder.pdq) if builder.pdq else np.zeros((0, 8, 32), np.uint8)
    thumbs = np.stack(builder.thumbs) if builder.thumbs else np.zeros((0, THUMB_SIDE, THUMB_SIDE, 3), np.uint8)
    regions, mirrors = builder.region_arrays()
    store.write_part(part, vectors, metadata, failures, stats, text, spans, pdq, thumbs, regions, mirrors)
    return stats


def check_store_spec(store: EmbeddingStore, spec: dict) -> None:
    existing = store.read_spec()
    if existing is None:
        store.write_spec(spec)
        return
    if existing.get("embedder") != spec["embedder"]:
        raise SettingsError(
            f"{store.root} already holds embeddings made with {existing.get('embedder')}; "
            f"this run asks for {spec['embedder']}. Use another folder, or delete it to start over."
        )
    if existing.get("decode_size") != spec["decode_size"]:
        raise SettingsError(
            f"{store.root} holds hashes of images decoded at size {existing.get('decode_size') or 'full'}; this run "
            f"asks for {spec['decode_size'] or 'full'} (embed.decode_size). Run with --set embed.decode_size="
            f"{existing.get('decode_size') or 'off'} to go on with it, or use another folder."
        )
    if existing.get("regions", 0) != spec["regions"]:
        raise SettingsError(
            f"{store.root} holds {existing.get('regions', 0)} region vectors an image; this run asks for "
            f"{spec['regions']} (embed.regions). Use another folder, or delete it to start over."
        )
    if existing.get("shards") != spec["shards"]:
        raise SettingsError(
            f"{store.root} was made for a different list of shards ({len(existing.get('shards', []))} before, "
            f"{len(spec['shards'])} now); use another folder for other input"
        )
    limit = max(existing.get("max_member_bytes", 0), spec["max_member_bytes"])
    updated = {**existing, "max_member_bytes": limit, "remote": spec["remote"]}  # write reads as embed last read
    if updated != existing:  # write must copy whatever any embed pass accepted
        store.write_spec(updated)


def embed(
    shards: str | list[str],
    out: str | Path,
    settings: EmbedSettings | None = None,
    engine=None,
    reporter: Reporter = SILENT,
) -> dict:
    """Embed every sample of `shards` into the store at `out`, skipping parts already complete."""
    settings = settings or EmbedSettings()
    settings.validate()
    urls = expand_shards(shards)
    embedder = cached_embedder(settings)  # fails fast on missing weights, before any shard is read
    store = EmbeddingStore(out)
    remove_stale_temporaries(store.root)
    check_store_spec(
        store,
        {
            "embedder": embedder.spec(),
            "decode_size": settings.decode_size,
            "regions": settings.regions,
            "shards": urls,
            "max_member_bytes": settings.max_member_bytes,
            "remote": asdict(RetryPolicy.of(settings)),
        },
    )

    done = {part for part in store.completed_parts() if not store.part_stats(part).get("retry_on_rerun")}
    units = [
        Unit(
            f"embed:{part}",
            embed_shard,
            {"url": url, "part": part, "store_root": str(store.root), "settings": settings},
        )
        for part, url in enumerate(urls)
        if part not in done
    ]
    run_units(engine or LocalEngine(settings.workers), units, "embed", len(urls), "shards", reporter)
    return summarize_store(store, urls, reporter)


def summarize_store(store: EmbeddingStore, urls: list[str], reporter: Reporter) -> dict:
    stats = [store.part_stats(part) for part in range(len(urls))]
    for item in stats:
        for reason in item["shard_faults"]:
            reporter.warn(f"shard {item['shard']}: {reason}")
    total = {
        "shards": len(urls),
        "samples": sum(s["samples"] for s in stats),
        "embedded": sum(s["embedded"] for s in stats),
        "failed": sum(s["failed"] for s in stats),
        "unreadable_shards": [
            {"shard": s["shard"], "reason": r} for s in stats for r in s["shard_faults"] if s["samples"] == 0
        ],
    }
    if total["embedded"] == 0:
        reasons = "; ".join(
            f"{s['shard']}: {', '.join(s['shard_faults']) or 'no image in any sample'}" for s in stats[:3]
        )
        raise InputError(
            f"no sample of the {len(urls)} input shard(s) could be read ({reasons}); "
            "check that they are WebDataset tar files with images"
        )
    return total
