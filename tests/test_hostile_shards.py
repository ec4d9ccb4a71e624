"""Crafted and broken shards are contained: a reason per sample or shard, nothing outside the output, the rest goes through."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from conftest import FLICKR, run_cli
from PIL import Image

from dedup.io.reader import iter_shard
from dedup.stages.summary import reason_class


def real_images(count: int) -> list[bytes]:
    images = []
    for sample in iter_shard(str(FLICKR / "flickr8k-224-00003.tar"), print):
        images.append(sample.files["jpg"])
        if len(images) == count:
            return images


def add(archive: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    archive.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def bomb_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buffer, format="PNG")  # 400 megapixels in ~60 kB
    return buffer.getvalue()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    inputs = root / "in"
    inputs.mkdir()
    images = real_images(12)
    with tarfile.open(inputs / "a-crafted.tar", "w") as archive:
        add(archive, "../../escape.jpg", images[0])
        add(archive, "../../escape.txt", b"I want out")
        add(archive, "/tmp/absolute.jpg", images[0])
        add(archive, "sym.jpg", kind=tarfile.SYMTYPE, link="/etc/passwd")
        add(archive, "hard.jpg", kind=tarfile.LNKTYPE, link="good.jpg")
        add(archive, "dev.jpg", kind=tarfile.CHRTYPE)
        add(archive, "fifo.jpg", kind=tarfile.FIFOTYPE)
        add(archive, "bomb.png", bomb_png())
        add(archive, "fake.jpg", b"<html>not an image</html>")
        add(archive, "huge.jpg", images[1])
        add(archive, "huge.bin", b"\0" * 3_000_000)
        add(archive, "__reserved__.jpg", images[2])
        add(archive, "we ird%20ké y#1.jpg", images[3])
        add(archive, "we ird%20ké y#1.txt", b"odd key")
        add(archive, "nocap.jpg", images[4])
        add(archive, "nocap.txt", b"")
        add(archive, "dup.jpg", images[5])
        add(archive, "middle.jpg", images[6])
        add(archive, "dup.jpg", images[7])  # the same key again, not adjacent: a second sample
        add(archive, "same.jpg", images[8])  # last sample here, first sample of the next shard: adjacent in output
    with tarfile.open(inputs / "b-next.tar", "w") as archive:
        add(archive, "same.jpg", images[9])
        add(archive, "good.jpg", images[10])
    good = inputs / "c-gz.tar.gz"
    with tarfile.open(good, "w:gz") as archive:
        add(archive, "gz.jpg", images[11])
    (inputs / "d-zero.tar").write_bytes(b"")
    (inputs / "e-corrupt.tar.gz").write_bytes(good.read_bytes()[:40] + b"\xff" * 200)
    run_dir = root / "run"
    result = run_cli(
        "run", inputs, "--config", "offline", "--run-dir", run_dir, "--set", "embed.max_member_bytes=2000000"
    )
    return root, run_dir, result


def manifest_of(run_dir: Path) -> dict:
    rows = pq.read_table(run_dir / "manifest.parquet").to_pylist()
    return {(Path(r["shard"]).name, r["key"], r["sample_index"]): r for r in rows}


@pytest.mark.parametrize(
    "key, words",
    [
        ("../../escape", "'..'"),
        ("/tmp/absolute", "absolute path"),
        ("sym", "is a link"),
        ("hard", "is a link"),
        ("dev", "not a regular file"),
        ("fifo", "not a regular file"),
        ("bomb", "decompression bomb"),
        ("fake", "cannot be decoded"),
        ("huge", "over the limit"),
        ("__reserved__", "reserved"),
    ],
)
def test_each_hostile_sample_has_its_reason(hostile, key, words):
    _, run_dir, _ = hostile
    rows = [r for (shard, k, _), r in manifest_of(run_dir).items() if k == key]
    assert len(rows) == 1, key
    assert rows[0]["status"] == "unreadable" and words in rows[0]["reason"], rows[0]


def test_odd_keys_duplicate_keys_and_empty_captions_go_through(hostile):
    root, run_dir, _ = hostile
    manifest = manifest_of(run_dir)
    kept = {(shard, key) for (shard, key, _), r in manifest.items() if r["status"] == "kept"}
    assert ("a-crafted.tar", "we ird%20ké y#1") in kept and ("a-crafted.tar", "nocap") in kept
    assert sum(1 for (shard, key, _) in manifest if key == "dup") == 2
    assert {("a-crafted.tar", "same"), ("b-next.tar", "same"), ("c-gz.tar.gz", "gz"), ("b-next.tar", "good")} <= kept
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["reconciles"]
    unreadable = Counter(reason_class(r["reason"]) for r in manifest.values() if r["status"] == "unreadable")
    assert summary["unreadable_by_reason"] == dict(sorted(unreadable.items())) and "other" not in unreadable
    read_back = list(wds.WebDataset([str(p) for p in sorted((run_dir / "shards").glob("*.tar"))], shardshuffle=False))
    assert len(read_back) == summary["kept"]  # same-key neighbours were not merged into one sample
    assert [item["key"] for item in summary["renamed_keys"]] == ["same"]
    written_as = {
        r["output_key"] for r in pq.read_table(run_dir / "manifest.parquet").to_pylist() if r["key"] == "same"
    }
    assert written_as == {"same", summary["renamed_keys"][0]["written_as"]}  # the manifest says which was renamed
    # gzip input and a renamed key need members re-serialised; plain tars otherwise go as byte ranges
    copies = {json.loads(p.read_text())["copy"] for p in (run_dir / "shards").glob("*_stats.json")}
    assert "members" in copies


def test_broken_shards_are_reported_and_nothing_escapes(hostile):
    root, run_dir, result = hostile
    summary = json.loads((run_dir / "summary.json").read_text())
    broken = {Path(item["shard"]).name for item in summary["unreadable_shards"]}
    assert broken == {"d-zero.tar", "e-corrupt.tar.gz"}
    assert "d-zero.tar" in result.stderr
    for suspect in (
        root.parent / "escape.jpg",
        root.parent / "escape.txt",
        root / "escape.txt",
        Path("/tmp/absolute.jpg"),
    ):
        assert not suspect.exists(), suspect
    for shard in (run_dir / "shards").glob("*.tar"):
        with tarfile.open(shard) as archive:
            for member in archive.getmembers():
                assert member.isfile() and not member.name.startswith("/") and ".." not in member.name.split("/")
    written = {p.resolve() for p in root.rglob("*") if p.is_file()}
    assert all(str(p).startswith(str(root.resolve())) for p in written)


def selected_copy_of_a_shard(tmp_path) -> Path:
    """A copy of a real shard, embedded, searched and selected in tmp_path/run: ready for write."""
    import shutil

    shard = tmp_path / "in" / "s.tar"
    shard.parent.mkdir()
    shutil.copy(FLICKR / "flickr8k-224-00008.tar", shard)
    run_cli("embed", shard, "--run-dir", tmp_path / "run", "--config", "offline")
    run_cli("find", "--run-dir", tmp_path / "run", "--config", "offline")
    run_cli("select", "--run-dir", tmp_path / "run")
    return shard


def test_changed_shard_between_embed_and_write_stops_the_run(tmp_path):
    import os

    shard = selected_copy_of_a_shard(tmp_path)
    stat = shard.stat()
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    result = run_cli("write", "--run-dir", tmp_path / "run", check=False)
    assert result.returncode == 2 and "changed since `dedup embed`" in result.stderr
    assert not (tmp_path / "run" / "shards").exists() or not list((tmp_path / "run" / "shards").glob("*.tar"))


def test_embeddings_of_another_embedder_are_refused(tmp_path):
    shard = FLICKR / "flickr8k-224-00008.tar"
    run_cli("embed", shard, "--run-dir", tmp_path, "--embedder", "pixels", "--pixel-size", "8")
    result = run_cli("embed", shard, "--run-dir", tmp_path, "--embedder", "pixels", "--pixel-size", "16", check=False)
    assert result.returncode == 3 and "already holds embeddings made with" in result.stderr


def test_shard_rewritten_with_the_same_size_and_time_is_caught_by_write(tmp_path):
    """A shard rewritten between embed and write, keeping its size and modification time (so the fingerprint
    matches): the recorded byte ranges no longer start at the samples embed saw, and write stops."""
    import os

    shard = selected_copy_of_a_shard(tmp_path)
    stat = shard.stat()
    with tarfile.open(shard) as archive:
        members = [(m, archive.extractfile(m).read()) for m in archive.getmembers()]
    with tarfile.open(shard, "w") as archive:  # the same members, the first two samples swapped
        for member, data in members[3:6] + members[:3] + members[6:]:
            archive.addfile(member, io.BytesIO(data))
    assert shard.stat().st_size == stat.st_size
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    result = run_cli("write", "--run-dir", tmp_path / "run", check=False)
    assert result.returncode == 2 and "changed since embed" in result.stderr, result.stderr


@pytest.mark.slow
def test_a_marker_that_outlived_its_shard_is_not_trusted(tmp_path):
    """With sync = "none", a crash of the machine can leave a shard's marker on disk while the shard's data is
    lost (a short or empty file): the rerun sees the size disagree with the marker and writes that shard again;
    the shards whose size agrees are kept as they are. The default, fsynced, writes the same bytes."""
    import os

    selected_copy_of_a_shard(tmp_path)
    run = tmp_path / "run"
    run_cli("write", "--run-dir", run, "--samples-per-shard", 30, "--set", "write.sync=none")
    shards = sorted((run / "shards").glob("*.tar"))
    assert len(shards) == 4  # 91 samples
    original = {path.name: path.read_bytes() for path in shards}
    os.truncate(shards[1], 0)
    untouched = shards[2].stat().st_mtime_ns
    run_cli("write", "--run-dir", run, "--samples-per-shard", 30, "--set", "write.sync=none")
    assert {path.name: path.read_bytes() for path in shards} == original
    assert shards[2].stat().st_mtime_ns == untouched
    run_cli("write", "--run-dir", run, "--samples-per-shard", 30, "--out", tmp_path / "durable")
    assert {path.name: path.read_bytes() for path in sorted((tmp_path / "durable").glob("*.tar"))} == original
