"""`dedup purge`: training images that near-copy a reference set go, with the reference they matched."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import CIFAR, run_cli, shard_head

from dedup.io.reader import iter_shard
from dedup.tools.planting import plant


@pytest.fixture(scope="module")
def contaminated(tmp_path_factory):
    """3,000 CIFAR-10 training images with 300 hidden copies of CIFAR-10 test images; the reference: the first
    3,000 test images (a shard of their own: embedding the whole 10,000-image shard is one unit, on one core)."""
    root = tmp_path_factory.mktemp("purge")
    reference = shard_head(CIFAR / "cifar10-test-00005.tar.gz", root / "reference.tar", 3000)
    planted = plant(
        str(CIFAR / "cifar10-train-00001.tar.gz"),
        root / "train",
        sources=300,
        copies=1,
        seed=5,
        limit=3000,
        shard_size=1100,
        transforms=("exact", "reencode", "resize"),
        donors=str(reference),
    )
    run_dir = root / "run"
    run_cli(
        "purge",
        root / "train",
        "--against",
        reference,
        "--config",
        "offline",
        "--run-dir",
        run_dir,
    )
    return planted, run_dir, reference


@pytest.mark.slow
def test_planted_copies_of_test_images_are_removed(contaminated):
    planted, run_dir, _ = contaminated
    manifest = pq.read_table(run_dir / "manifest.parquet").to_pylist()
    assert len(manifest) == planted.samples
    donor_of = {group[1]: group[0] for group in planted.groups}
    rows = {row["key"]: row for row in manifest}
    removed = [key for key in donor_of if rows[key]["status"] == "dropped"]
    assert len(removed) / len(donor_of) >= 0.99
    assert all(rows[key]["reference_key"] == donor_of[key] for key in removed)
    others = [row for row in manifest if row["key"] not in donor_of]
    other_removed = [row for row in others if row["status"] == "dropped"]
    assert len(other_removed) / len(others) <= 0.01
    # CIFAR-10's own test/train near-duplicates are found and named
    assert other_removed, "expected some natural CIFAR-10 test/train near-duplicates"
    assert all(row["reason"].startswith("near-copy of reference") and row["reference_key"] for row in other_removed)


@pytest.mark.slow
def test_written_shards_hold_the_rest(contaminated):
    planted, run_dir, _ = contaminated
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["reconciles"]
    assert any(reason.startswith("reference match") for reason in summary["dropped_by_reason"])
    written = sum(1 for shard in (run_dir / "shards").glob("*.tar") for _ in iter_shard(str(shard), print))
    assert written == summary["kept"] == planted.samples - summary["dropped"] - summary["unreadable"]


@pytest.mark.slow
def test_reference_embeddings_are_reused(contaminated):
    _, run_dir, reference = contaminated
    before = (run_dir / "reference" / "stats" / "stats_0.json").stat().st_mtime_ns
    result = run_cli(
        "purge",
        "--against",
        reference,
        "--config",
        "offline",
        "--run-dir",
        run_dir,
        "--no-write",
    )
    assert "already done" in result.stderr
    assert (run_dir / "reference" / "stats" / "stats_0.json").stat().st_mtime_ns == before


@pytest.mark.slow
def test_a_single_image_takedown_removes_its_copies(contaminated, tmp_path):
    planted, run_dir, reference = contaminated
    donor_key = planted.groups[0][0]
    donor = next(s for s in iter_shard(str(reference), print) if s.key == donor_key)
    image = tmp_path / "takedown.jpg"
    image.write_bytes(donor.files["jpg"])
    second = tmp_path / "run2"
    run_cli(
        "purge",
        *sorted(str(p) for p in (run_dir.parent / "train").glob("*.tar")),
        "--against",
        image,
        "--config",
        "offline",
        "--run-dir",
        second,
        "--no-write",
    )
    rows = [r for r in pq.read_table(second / "manifest.parquet").to_pylist() if r["status"] == "dropped"]
    assert {r["key"] for r in rows} >= {planted.groups[0][1]}
    assert {r["reference_key"] for r in rows} == {"takedown"}
