"""`--engine ray` gives what the local engine gives: the same embeddings, manifest and output shards."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, clip_retrieval_store, run_cli

from dedup.io.store import EmbeddingStore

pytest.importorskip("ray.data", reason="the ray extra is not installed (pip install 'dedup[ray]')")


def digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


@pytest.mark.slow
def test_ray_engine_matches_local_engine(planted_flickr_small, tmp_path):
    """Three shards are enough for units to run side by side; a run's cost on Ray is mostly its cluster's start."""
    shards_dir, planted = planted_flickr_small
    runs = {}
    for engine in ("local", "ray"):
        run_dir = tmp_path / engine
        run_cli(
            "run",
            shards_dir,
            "--config",
            ROOT / "configs" / "offline.toml",
            "--run-dir",
            run_dir,
            "--engine",
            engine,
            "--workers",
            "2",
            "--set",
            "write.samples_per_shard=200",
        )
        runs[engine] = run_dir
    local, ray = runs["local"], runs["ray"]

    local_store, ray_store = EmbeddingStore(local / "embeddings").load(), EmbeddingStore(ray / "embeddings").load()
    assert local_store.metadata.equals(ray_store.metadata)
    np.testing.assert_array_equal(local_store.embeddings, ray_store.embeddings)

    columns = ["key", "shard", "status", "reason", "group_id"]
    local_manifest = pq.read_table(local / "manifest.parquet").select(columns)
    ray_manifest = pq.read_table(ray / "manifest.parquet").select(columns)
    assert len(local_manifest) == planted.samples
    assert local_manifest.equals(ray_manifest)
    assert digests(local / "shards") == digests(ray / "shards")
    assert len(digests(ray / "shards")) >= 3  # several write units really ran on the actor pool


@pytest.mark.slow
def test_partitioned_find_units_on_ray_match_local(tmp_path):
    """find's partitioned search as units on Ray actors: the pairs of the local engine."""
    from dedup.tools.planting import planted_embeddings

    vectors, _ = planted_embeddings(30_000, dim=32, seed=4)
    clip_retrieval_store(tmp_path / "emb", vectors, 12_000)
    pairs = {}
    for engine in ("local", "ray"):
        run_cli(
            "find",
            "--run-dir",
            tmp_path / engine,
            "--embeddings",
            tmp_path / "emb",
            "--index",
            "partitioned",
            "--threshold",
            "0.9",
            "--no-exact",
            "--phash-radius",
            "off",
            "--engine",
            engine,
            "--workers",
            "2",
            "--set",
            "find.unit_rows=8000",
            "--set",
            "find.leaf_size=512",
        )
        table = pq.read_table(tmp_path / engine / "pairs.parquet")
        pairs[engine] = set(zip(table["a"].to_pylist(), table["b"].to_pylist()))
    assert len(pairs["local"]) >= 290
    assert pairs["ray"] == pairs["local"]


def test_unknown_engine_is_refused(tmp_path):
    result = run_cli("run", tmp_path, "--engine", "spark", check=False)
    assert result.returncode == 3
    assert "engine must be local or ray" in result.stderr
