"""Low-detail images (rendered numbers and words, small digits, icons on flat backgrounds): hashes and thumbnails
summarise them alike, so the presets must keep distinct ones apart and still find their copies."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import run_cli
from low_detail import write_low_detail_shard

from dedup.search import low_detail


def _groups(run_dir) -> dict[str, int]:
    rows = pq.read_table(run_dir / "groups.parquet", columns=["key", "group_id"]).to_pylist()
    return {row["key"]: row["group_id"] for row in rows}


@pytest.mark.parametrize("preset", [pytest.param("default", marks=pytest.mark.slow), "hashes", "offline"])
def test_distinct_low_detail_images_stay_apart_and_their_copies_are_found(tmp_path, preset):
    shard = tmp_path / "low-detail.tar"
    names, copies = write_low_detail_shard(shard, seed=3)
    run_cli("run", shard, "--config", preset, "--run-dir", tmp_path / "run")
    group = _groups(tmp_path / "run")
    merged = [(a, b) for a, b in itertools.combinations(names, 2) if group[a] == group[b]]
    assert merged == []
    assert all(group[copy] == group[original] for copy, original in copies)


def test_without_the_check_hashes_merge_distinct_low_detail_images(tmp_path):
    """The check is what keeps them apart: the same run with it off merges distinct images."""
    shard = tmp_path / "low-detail.tar"
    names, _ = write_low_detail_shard(shard, seed=3)
    run_cli("run", shard, "--config", "hashes", "--run-dir", tmp_path / "run", "--set", "find.low_detail_tolerance=off")
    group = _groups(tmp_path / "run")
    assert any(group[a] == group[b] for a, b in itertools.combinations(names, 2))


def test_thumbnail_search_equals_brute_force():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (60, 16, 16, 3), dtype=np.uint8)
    thumbs = np.concatenate([base, np.rot90(base[:20], 1, axes=(1, 2)), base[20:40][:, :, ::-1]])
    noisy = np.clip(thumbs.astype(np.int16) + rng.integers(-6, 7, thumbs.shape), 0, 255).astype(np.uint8)
    low = np.ones(len(noisy), dtype=bool)
    low[5] = False
    a, b = low_detail.thumbnail_pairs(noisy, low, tolerance=24)
    expected = {
        (i, j)
        for i, j in itertools.combinations(range(len(noisy)), 2)
        if low[i] and low[j] and low_detail.disagreement(noisy[i : i + 1], noisy[j : j + 1])[0] <= 24
    }
    assert set(zip(a.tolist(), b.tolist())) == expected
    assert len(expected) == 39  # each turned or mirrored copy with its original, row 5 left out
