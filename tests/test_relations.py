"""What kind of match a pair is (dedup/search/relations.py), on real photos: Flickr8k's own scene pairs, labelled by
eye (benchmarks/labels/flickr8k-relations.json), and edited copies of its photos made here; and what select does
with the relation (select.drop_relations)."""

from __future__ import annotations

import io
import json
import tarfile
from functools import cache

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FLICKR, ROOT, run_cli
from PIL import Image, ImageEnhance

from dedup.search import local_features, relations

LABELS = ROOT / "benchmarks" / "labels" / "flickr8k-relations.json"


@cache
def _shard(name: str) -> dict[str, bytes]:
    with tarfile.open(FLICKR / name) as archive:
        return {m.name[:-4]: archive.extractfile(m).read() for m in archive if m.name.endswith(".jpg")}  # type: ignore[union-attr]


def _image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def _relation(first: Image.Image, second: Image.Image, copy_signal: bool = False) -> str:
    found = relations.evidence(local_features.features(first, mirrored=True), local_features.features(second), 30)
    return relations.decide(found, copy_signal)


def _jpeg(image: Image.Image, quality: int = 75) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return _image(buffer.getvalue())


def test_scene_pairs_read_as_same_scene_and_the_copies_as_copies(shared):
    """Flickr8k's photos of one scene moments apart (labelled by eye) are mostly same_scene; its one copy and its
    exact pair are not; edited copies made here (a crop, a recolouring, a recompression) are copies or partial."""
    pairs = json.loads(LABELS.read_text())["pairs"]
    decided = {
        (shard_a, key_a, shard_b, key_b): _relation(_image(_shard(shard_a)[key_a]), _image(_shard(shard_b)[key_b]))
        for shard_a, key_a, shard_b, key_b, label in pairs
        if label in ("same_scene", "copy", "exact")
    }
    label_of = {tuple(pair[:4]): pair[4] for pair in pairs}
    scenes = [relation for pair, relation in decided.items() if label_of[pair] == "same_scene"]
    assert scenes.count("same_scene") >= 17, scenes  # 19 of 23 when the thresholds were chosen (docs/relations.md)
    assert [relation for pair, relation in decided.items() if label_of[pair] != "same_scene"] == ["copy", "copy"]

    photos = list(_shard("flickr8k-224-00006.tar").values())[:12]
    for data in photos:
        photo = _image(data)
        width, height = photo.size
        crop = photo.crop((width // 10, height // 10, width - width // 8, height - height // 9)).resize((200, 200))
        recoloured = ImageEnhance.Color(ImageEnhance.Brightness(photo).enhance(1.25)).enhance(0.3)
        for copy in (crop, recoloured, _jpeg(photo, 20)):
            assert _relation(photo, _jpeg(copy)) in ("copy", "partial")
        region = photo.crop((width // 4, height // 4, width // 4 + width * 7 // 10, height // 4 + height * 7 // 10))
        assert _relation(photo, region.resize(photo.size)) == "partial"  # half the photo, enlarged


def test_a_pair_without_geometry_is_a_copy_only_on_a_copy_signals_word():
    blank = relations.Evidence(12, False, False, *[float("nan")] * 4, 0.9)
    assert relations.decide(blank, copy_signal=True) == "copy"
    assert relations.decide(blank, copy_signal=False) == "similar"
    assert relations.decide(relations.UNREAD, copy_signal=True) == "unknown"
    assert relations.copy_signals({"embedder": "copydetect"}) >= {"embedding", "pdq"}
    assert "embedding" not in relations.copy_signals({"embedder": "clip"})


def _natural_run(tmp_path, *settings: str):
    """Two shards of Flickr8k that hold two of its scene pairs and two copies, run with the default."""
    run_dir = tmp_path / "run"
    shards = [str(FLICKR / "flickr8k-224-00003.tar"), str(FLICKR / "flickr8k-224-00006.tar")]
    result = run_cli("run", *shards, "--run-dir", run_dir, *settings)
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.mark.slow
def test_select_keeps_scene_pairs_apart_when_told_and_a_persons_label_overrules_it(tmp_path, shared):
    run_dir = _natural_run(tmp_path)
    pairs = pq.read_table(run_dir / "pairs.parquet")
    assert {"relation", "coverage_a", "changed", "misfit", "sharpness_ratio"} <= set(pairs.column_names)
    scene = [i for i, name in enumerate(pairs["relation"].to_pylist()) if name == "same_scene"]
    assert scene, pairs["relation"].to_pylist()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["reconciles"] and sum(summary["dropped_by_relation"].values()) == summary["dropped"]
    assert summary["dropped_by_relation"].get("same_scene", 0) >= 1  # the default drops them (docs/relations.md)

    apart = ["--set", 'select.drop_relations=["exact", "copy", "partial", "similar", "unknown"]']
    result = run_cli("select", "--run-dir", run_dir, *apart)
    assert result.returncode == 0, result.stderr
    manifest = pq.read_table(run_dir / "manifest.parquet").to_pylist()
    noted = [row for row in manifest if "kept apart from its same_scene pairs" in (row["reason"] or "")]
    assert len(noted) >= 4 and all(row["status"] == "kept" for row in noted)
    assert not any(row["relation"] == "same_scene" for row in manifest if row["status"] == "dropped")

    groups = pq.read_table(run_dir / "groups.parquet").to_pylist()
    first = groups[pairs["a"][scene[0]].as_py()]
    second = groups[pairs["b"][scene[0]].as_py()]
    label = {"a": first["key"], "b": second["key"], "a_shard": first["shard"], "b_shard": second["shard"]}
    pq.write_table(pa.Table.from_pylist([{**label, "duplicate": True}]), run_dir / "labels.parquet")
    assert run_cli("select", "--run-dir", run_dir, *apart).returncode == 0
    manifest = pq.read_table(run_dir / "manifest.parquet").to_pylist()
    decided = {row["key"]: row for row in manifest}
    assert {decided[first["key"]]["status"], decided[second["key"]]["status"]} == {"kept", "dropped"}


def test_an_unknown_relation_name_is_refused_with_the_valid_ones(tmp_path):
    """A settings error, exit 3 as every other one (dedup/errors.py), before anything is read."""
    result = run_cli("select", "--run-dir", tmp_path, "--set", 'select.drop_relations=["copy", "scene"]', check=False)
    assert result.returncode == 3
    assert "'scene'" in result.stderr and "same_scene" in result.stderr


def test_pairs_from_before_relations_read_unknown_never_guessed():
    old = pa.table(
        {
            "a": pa.array([0, 1], pa.int64()),
            "b": pa.array([1, 2], pa.int64()),
            "signal": ["exact", "embedding"],
            "similarity": pa.array([1.0, 0.9], pa.float32()),
        }
    )
    read = relations.with_relations(old)
    assert read["relation"].to_pylist() == ["exact", "unknown"]
    assert np.isnan(read["changed"].to_numpy()).all()
    assert relations.with_relations(read) is read
    # a table with relations from before the thumbnails' `dense` evidence: read with it NaN (review reads every column)
    without_dense = read.drop_columns(["dense"])
    assert np.isnan(relations.with_relations(without_dense)["dense"].to_numpy()).all()


def test_a_degenerate_alignment_measures_nothing_and_does_not_crash():
    """Keypoints nearly on one line fit wild transforms; OpenCV's warp crashed the process on one (Imagenette)."""
    small = np.full((64, 64), 128, np.uint8)
    for matrix in (np.array([[np.nan, 0, 0], [0, 1, 0]]), np.array([[1e6, 0, 0], [0, 1e6, 0]])):
        coverage_a, coverage_b, changed = relations.overlap(small, 1.0, small, 1.0, matrix)
        assert (coverage_a, coverage_b) == (0.0, 0.0) and np.isnan(changed)
