"""Copies among 32 x 32 photos (CIFAR-10 test images and their copies in the training set), confirmed by their
pixels where keypoints cannot be had."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import CIFAR, run_cli, tar_bytes
from PIL import Image

from dedup.io.store import EmbeddingStore
from dedup.search import small_images

# (training image, test image): one picture recoloured, shifted, rescaled or mirrored, labelled by eye; their
# cosine lies between verification's and the threshold (0.64-0.74), PDQ does not join them and ORB finds too few
# keypoints to align them
COPIES = [
    ("000018361", "000058195"),
    ("000034444", "000058655"),
    ("000039398", "000058201"),
    ("000007688", "000051889"),
    ("000004237", "000059132"),
    ("000049911", "000056230"),
]
# two photos of one kind of thing, as alike to the model (cosine 0.59-0.74): other ships, planes, cars, horses
DISTINCT = [
    ("000004825", "000054372"),
    ("000011125", "000059576"),
    ("000022278", "000053205"),
    ("000035554", "000052315"),
    ("000011125", "000052555"),
    ("000008601", "000059043"),
]


def _samples(keys: set[str]) -> dict[str, dict[str, bytes]]:
    found: dict[str, dict[str, bytes]] = {}
    shards = [f"cifar10-train-{n:05d}.tar.gz" for n in range(5)] + ["cifar10-test-00005.tar.gz"]
    for shard in shards:
        wanted = {key for key in keys if int(key[:5]) == int(shard[-12:-7])}
        if not wanted:
            continue
        with tarfile.open(CIFAR / shard) as archive:
            for member in archive:
                key, _, extension = member.name.partition(".")
                if key in wanted:
                    found.setdefault(key, {})[extension] = archive.extractfile(member).read()
    assert set(found) == keys, sorted(keys - set(found))
    return found


@pytest.fixture(scope="module")
def pairs_shard(tmp_path_factory, shared):
    keys = {key for pair in COPIES + DISTINCT for key in pair}
    samples = _samples(keys)
    members = [(f"{key}.{extension}", data) for key in sorted(samples) for extension, data in samples[key].items()]
    folder = tmp_path_factory.mktemp("cifar-pairs")
    (folder / "pairs.tar").write_bytes(tar_bytes(members))
    return folder / "pairs.tar", samples


def _gray(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


def test_copies_of_thumbnails_agree_edge_for_edge_photos_of_one_kind_do_not(pairs_shard):
    _, samples = pairs_shard

    def confirmed(first: str, second: str) -> bool:
        one, other = _gray(samples[first]["jpg"]), _gray(samples[second]["jpg"])
        return small_images.confirms(small_images.agreement(one, other)[0], one, other)

    assert [confirmed(*pair) for pair in COPIES] == [True] * len(COPIES)
    assert [confirmed(*pair) for pair in DISTINCT] == [False] * len(DISTINCT)


def test_find_joins_thumbnail_copies_by_their_pixels_and_keeps_alike_photos_apart(pairs_shard, tmp_path):
    shard, _ = pairs_shard
    run_cli("embed", shard, "--run-dir", tmp_path)
    run_cli("find", "--run-dir", tmp_path)
    keys = EmbeddingStore(tmp_path / "embeddings").load().metadata["key"].to_pylist()
    pairs = pq.read_table(tmp_path / "pairs.parquet").to_pylist()
    found = {frozenset((keys[row["a"]], keys[row["b"]])): row for row in pairs}
    for pair in COPIES:
        row = found.get(frozenset(pair))
        assert row is not None, pair
        assert row["relation"] == "copy" and row["dense"] >= small_images.AGREE, row
    assert not [pair for pair in DISTINCT if frozenset(pair) in found]


def test_larger_images_are_not_compared_by_their_pixels():
    photo = np.zeros((65, 65), np.uint8)
    assert not small_images.is_small(photo, 1.0)
    assert small_images.is_small(photo[:32, :32], 1.0)
    assert not small_images.is_small(photo[:32, :32], 0.5)  # a larger image, shrunk


def test_purge_verifies_too_and_drops_the_training_copies_of_test_thumbnails(pairs_shard, tmp_path):
    """Decontamination: the training images that copy a test image go, by the same pixels; alike photos stay."""
    _, samples = pairs_shard
    pairs = COPIES + DISTINCT
    for name, keys in (("train", [train for train, _ in pairs]), ("test", [test for _, test in pairs])):
        members = [(f"{key}.{extension}", data) for key in keys for extension, data in samples[key].items()]
        (tmp_path / f"{name}.tar").write_bytes(tar_bytes(members))
    run_cli("purge", tmp_path / "train.tar", "--against", tmp_path / "test.tar", "--run-dir", tmp_path / "run")
    rows = {row["key"]: row for row in pq.read_table(tmp_path / "run" / "manifest.parquet").to_pylist()}
    for train, test in COPIES:
        assert rows[train]["status"] == "dropped" and rows[train]["reference_key"] == test, rows[train]
    assert [train for train, _ in DISTINCT if rows[train]["status"] == "dropped"] == []
