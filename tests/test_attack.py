"""The attack's parts on hand-computed cases, and a tiny `verify` end to end for the mechanics."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import CIFAR, run_cli
from dedup.attack.diffusion import auc
from dedup.attack.distances import normalized_l2, pairwise_l2, relative_ratio, tiled_l2
from dedup.attack.extraction import counts_by_duplicates, flag_memorized, largest_clique, white_box


def test_normalized_l2_by_hand():
    a = np.zeros((2, 2, 3))
    b = np.zeros((2, 2, 3))
    b[0, 0, 0] = 1.0  # one value differs by 1 among 12: sqrt(1/12)
    assert normalized_l2(a, b) == pytest.approx(np.sqrt(1 / 12))
    assert normalized_l2(a, a) == 0


def test_tiled_l2_takes_the_worst_tile():
    a = np.zeros((4, 4, 1))
    b = np.zeros((4, 4, 1))
    b[0, 0, 0] = 0.8  # only the top-left 2x2 tile differs: sqrt(0.64 / 4) = 0.4
    assert tiled_l2(a, b, grid=2) == pytest.approx(0.4)
    assert normalized_l2(a, b) == pytest.approx(0.2)  # diluted over the whole image


def test_relative_ratio_and_white_box():
    rng = np.random.default_rng(0)
    training = rng.random((60, 12))
    generations = np.stack([training[3] + 0.001, rng.random(12)])
    nearest, ratio = relative_ratio(generations, training, neighbours=50)
    assert nearest[0] == 3 and ratio[0] < 0.05
    assert ratio[1] > 0.5
    result = white_box(generations, training, alpha=0.5)
    assert result.extracted.tolist() == [True, False] and result.unique_extracted == [3]
    assert pairwise_l2(training[:2], training[:2])[0, 0] == pytest.approx(0, abs=1e-3)


def test_clique_filter_flags_only_the_memorized_prompt():
    rng = np.random.default_rng(1)
    base = rng.random((8, 8, 3))
    memorized = np.stack([np.clip(base + 0.01 * rng.standard_normal(base.shape), 0, 1) for _ in range(12)] +
                         [rng.random((8, 8, 3)) for _ in range(8)])
    diverse = rng.random((20, 8, 8, 3))
    flagged = flag_memorized({"memorized": memorized, "diverse": diverse}, delta=0.15, min_clique=10, grid=2)
    assert list(flagged) == ["memorized"] and flagged["memorized"] == list(range(12))
    assert len(largest_clique(diverse, 0.15, 2)) < 10


def test_auc_and_counts():
    assert auc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert auc(np.array([0.5]), np.array([0.5])) == 0.5
    assert counts_by_duplicates([0, 2, 3], np.array([1, 1, 200, 200])) == {1: 1, 200: 2}


def test_tiny_verify_end_to_end(tmp_path):
    preset = tmp_path / "verify-tiny.toml"
    preset.write_text(f"""
[plant]
source = "{CIFAR / 'cifar10-train-00002.tar.gz'}"
unique = 300
sources = 3
copies = 20
transforms = ["exact", "reencode"]
shard_size = 150
[holdout]
shards = "{CIFAR / 'cifar10-test-00005.tar.gz'}"
count = 40
[model]
resolution = 8
channels = [8, 16, 16]
train_steps = 4
batch_size = 16
sample_steps = 4
[attack]
generations = 16
neighbours = 10
duplicated_min = 10
unique_sample = 40
""")
    result = run_cli("verify", tmp_path / "run", "--preset", preset)
    report = json.loads((tmp_path / "run" / "verify.json").read_text())
    assert report["training_images"] == {"A": 360, "B": 300}  # 300 real images, 3 of them with 20 copies
    for model in ("A", "B"):
        assert report[model]["duplicated_images"] == 3
        assert 0 <= report[model]["membership_auc_duplicated_vs_heldout"] <= 1
        assert report[model]["generations"] == 16
    assert (tmp_path / "run" / "verify-counts.png").exists() and (tmp_path / "run" / "verify-pairs.png").exists()
    assert "membership AUC" in result.stderr + result.stdout
