"""`purge`: drop every training sample that is a near-copy of any image of a reference set.

For evaluation decontamination (training images that near-duplicate a benchmark's test images) and for
takedown or privacy requests (an image and all its copies must go). The reference set (shards, a folder of
images, or one image) is embedded once into its own store and reused. Each training sample is matched
against it with the same signals as `find` (exact, perceptual hash, embedding, both agreeing), and its
borderline pairs verified as `find` verifies them (local features; thumbnails by their pixels), reading both
sets' images again; a match turns the sample's manifest row into `dropped`, naming the reference image it
matched and how closely.
When the run already has a manifest from `select`, purge adds its drops to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dedup.errors import SettingsError
from dedup.io.atomic import write_json, write_parquet
from dedup.io.manifest import ungrouped_rows, unreadable_rows
from dedup.io.runfolder import RunFolder, load_manifest
from dedup.io.store import EmbeddingStore
from dedup.progress import SILENT, Reporter
from dedup.search import regions
from dedup.search.signals import (
    SIGNALS,
    Samples,
    SignalPairs,
    best_partner,
    signal_pairs,
    stacked,
    with_similarity,
)
from dedup.search.verify_pairs import Proposals, new_proposals, verify_borderline
from dedup.settings import FindSettings

PURGE_COLUMNS = [
    ("reference_key", pa.string()),
    ("reference_shard", pa.string()),
    ("reference_similarity", pa.float32()),
    ("reference_match", pa.string()),
]


def best_reference(train: Samples, reference: Samples, settings: FindSettings, verify=None):
    """For each training row, its best reference match (strongest signal, then highest cosine): the reference
    row (-1 if none), the cosine and the signal's code. `verify(found)`: turns the borderline pairs into verified
    ones (verify_across)."""
    found = signal_pairs(train, reference, settings)
    if verify is not None:
        verify(found)
    q, r, codes, similarity = stacked(found)
    similarity = with_similarity(similarity, train.embeddings, reference.embeddings, q, r)
    return best_partner(len(train.embeddings), q, r, codes, similarity)


def verify_across(
    found: SignalPairs,
    train: Samples,
    train_store: EmbeddingStore,
    train_metadata: pa.Table,
    reference: Samples,
    reference_store: EmbeddingStore,
    reference_metadata: pa.Table,
    settings: FindSettings,
    reporter: Reporter,
) -> dict:
    """find's verification of the borderline (training row, reference row) pairs, the two sets as one (the
    reference rows after the training rows); where both stores hold region vectors (embed.regions), the pairs a
    region of one set's image proposes against the other set's whole images are verified too."""
    offset = len(train_metadata)
    found.pairs = {name: (a, b + offset) for name, (a, b) in found.pairs.items()}
    columns = ["shard", "sample_index"]
    metadata = pa.concat_tables([train_metadata.select(columns), reference_metadata.select(columns)])
    low_detail = np.concatenate([train.low_detail_rows(), reference.low_detail_rows()])
    proposed = None
    if settings.region_threshold is not None:
        proposed = proposals_across(found, train, train_store, reference, reference_store, low_detail, settings)
        if proposed is not None:
            reporter.info(f"purge: {len(proposed.a)} pairs proposed by region queries")
    info = verify_borderline(found, metadata, settings, reporter, {}, proposed, low_detail)
    found.pairs = {name: (a, b - offset) for name, (a, b) in found.pairs.items()}
    return info


def proposals_across(
    found: SignalPairs,
    train: Samples,
    train_store: EmbeddingStore,
    reference: Samples,
    reference_store: EmbeddingStore,
    low_detail: np.ndarray,
    settings: FindSettings,
) -> Proposals | None:
    """Region queries between the sets (rows as verify_across numbers them): each set's crops against the other's
    whole images and their mirror images; None unless both stores hold region vectors."""
    assert settings.region_threshold is not None
    train_regions, reference_regions = train_store.region_vectors(), reference_store.region_vectors()
    if train_regions is None or reference_regions is None or train_regions.shape[1] != reference_regions.shape[1]:
        return None
    offset = len(train.embeddings)
    a, b, score, region = regions.candidates_between(
        regions.RowSet(train_regions, train.embeddings, train_store.mirror_vectors(), 0),
        regions.RowSet(reference_regions, reference.embeddings, reference_store.mirror_vectors(), offset),
        settings.region_threshold,
        settings.region_per_row,
    )
    embeddings = np.concatenate([train.embeddings, reference.embeddings])
    return new_proposals(found, a, b, score, region, embeddings, low_detail, train_regions.shape[1])


def base_manifest(run_dir: Path, train) -> pa.Table:
    """The run's manifest from `select` when there is one; else every readable sample kept."""
    if RunFolder(run_dir).manifest.exists():
        return load_manifest(run_dir)
    kept = ungrouped_rows(train.metadata, "kept", pa.array(["no reference match"] * len(train.metadata), pa.string()))
    return pa.concat_tables([kept, unreadable_rows(train.failures)])


def purge(
    train_store: str | Path,
    reference_store: str | Path,
    run_dir: str | Path,
    settings: FindSettings | None = None,
    reporter: Reporter = SILENT,
) -> dict:
    settings = settings or FindSettings()
    settings.validate()
    run_dir = Path(run_dir)
    train_folder, reference_folder = EmbeddingStore(train_store), EmbeddingStore(reference_store)
    train, reference = train_folder.load(), reference_folder.load()
    if train.spec.get("embedder") != reference.spec.get("embedder"):
        raise SettingsError(
            f"training embeddings ({train.spec.get('embedder')}) and reference embeddings "
            f"({reference.spec.get('embedder')}) were made differently; embed both with the same embedder"
        )
    train_samples = Samples.from_store(train_folder, train, settings)
    reference_samples = Samples.from_store(reference_folder, reference, settings)
    verification: dict = {}

    def verify(found: SignalPairs) -> None:
        verification.update(
            verify_across(
                found,
                train_samples,
                train_folder,
                train.metadata,
                reference_samples,
                reference_folder,
                reference.metadata,
                settings,
                reporter,
            )
        )

    best, similarity, code = best_reference(
        train_samples, reference_samples, settings, verify if settings.verify_threshold is not None else None
    )

    manifest = base_manifest(run_dir, train)
    row_of = {
        (s, i): n
        for n, (s, i) in enumerate(
            zip(train.metadata["shard_index"].to_pylist(), train.metadata["sample_index"].to_pylist())
        )
    }
    ref_keys, ref_shards = reference.metadata["key"].to_pylist(), reference.metadata["shard"].to_pylist()
    status, reasons = manifest["status"].to_pylist(), manifest["reason"].to_pylist()
    # an earlier purge's matches (another reference set) stay in place
    extra: dict[str, list[Any]] = {
        name: manifest[name].to_pylist() if name in manifest.column_names else [None] * len(manifest)
        for name, _ in PURGE_COLUMNS
    }
    matched = 0
    for n, (shard_index, sample_index) in enumerate(
        zip(manifest["shard_index"].to_pylist(), manifest["sample_index"].to_pylist())
    ):
        row = row_of.get((shard_index, sample_index), -1) if status[n] != "unreadable" else -1
        hit = best[row] if row >= 0 else -1
        if hit < 0:
            continue
        matched += 1
        signal = SIGNALS[code[row]]
        extra["reference_key"][n] = ref_keys[hit]
        extra["reference_shard"][n] = ref_shards[hit]
        extra["reference_similarity"][n] = float(similarity[row])
        extra["reference_match"][n] = signal
        status[n] = "dropped"
        reasons[n] = (
            f"near-copy of reference {ref_shards[hit]}:{ref_keys[hit]} ({signal} match, similarity {similarity[row]:.4f})"
        )
    manifest = manifest.set_column(manifest.schema.get_field_index("status"), "status", pa.array(status, pa.string()))
    manifest = manifest.set_column(manifest.schema.get_field_index("reason"), "reason", pa.array(reasons, pa.string()))
    for name, kind in PURGE_COLUMNS:
        if name in manifest.column_names:
            manifest = manifest.drop_columns([name])
        manifest = manifest.append_column(pa.field(name, kind), pa.array(extra[name], kind))
    write_parquet(RunFolder(run_dir).manifest, manifest)
    summary = {
        "training_samples": len(manifest),
        "reference_images": len(reference.metadata),
        "matched": matched,
        "matched_by_signal": {s: int(pc.sum(pc.equal(manifest["reference_match"], s)).as_py() or 0) for s in SIGNALS},
        "kept": status.count("kept"),
        "dropped": status.count("dropped"),
        "unreadable": status.count("unreadable"),
        "reference_store": str(reference_store),
    }
    if verification:
        summary["verification"] = verification
    write_json(RunFolder(run_dir).purge_summary, summary)
    reporter.info(
        f"purge: {matched} of {len(manifest)} training samples are near-copies of the {len(reference.metadata)} reference images"
    )
    return summary
