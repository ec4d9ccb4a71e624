"""Reading shards in every form a user gives them, and a clear message for every kind of bad input."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import tarfile
import threading

import pyarrow.parquet as pq
import pytest
from conftest import CIFAR, FLICKR, jpeg_bytes, run_cli, tar_bytes

from dedup.errors import InputError
from dedup.io.reader import iter_shard
from dedup.io.sources import expand_shards


def collect(url):
    faults = []
    samples = list(iter_shard(url, faults.append))
    return samples, faults


def test_sample_keeps_identity_and_every_file(tmp_path):
    extra = b"\x00\x01binary"
    shard = tmp_path / "s.tar"
    shard.write_bytes(
        tar_bytes(
            [
                ("a.jpg", jpeg_bytes()),
                ("a.txt", b"cap"),
                ("a.json", b"{}"),
                ("a.seg.png", extra),
                ("b.jpg", jpeg_bytes((1, 2, 3))),
            ]
        )
    )
    samples, faults = collect(str(shard))
    assert faults == []
    assert [(s.key, s.index) for s in samples] == [("a", 0), ("b", 1)]
    assert samples[0].files["seg.png"] == extra and set(samples[0].files) == {"jpg", "txt", "json", "seg.png"}
    assert samples[0].shard == str(shard)


def test_brace_patterns_folders_and_gz(tmp_path):
    urls = expand_shards(str(FLICKR / "flickr8k-224-{00000..00002}.tar"))
    assert [u.rsplit("/", 1)[1] for u in urls] == [f"flickr8k-224-{i:05d}.tar" for i in range(3)]
    assert len(expand_shards(str(FLICKR))) == 9
    samples, faults = collect(str(CIFAR / "cifar10-test-00005.tar.gz"))
    assert len(samples) == 10_000 and faults == []
    assert set(samples[0].files) == {"jpg", "txt", "json"}


@pytest.mark.slow
def test_a_large_image_folder_is_read_in_parts_and_every_image_accounted_for(tmp_path):
    """A folder of more than FOLDER_PART_IMAGES images becomes parts an engine spreads over its workers: every
    photo is a sample once, keyed by its path in the folder; planted copies in another subfolder are found
    across parts; a folder that changes before write stops it with what to do."""
    folder = tmp_path / "photos"
    keys = []
    for shard in ("00000", "00001"):
        with tarfile.open(FLICKR / f"flickr8k-224-{shard}.tar") as archive:
            for member in archive:
                if member.name.endswith(".jpg"):
                    path = folder / shard / member.name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(archive.extractfile(member).read())
                    keys.append(f"{shard}/{member.name[:-4]}")
    copies = {f"copies/{n}": keys[n * 150] for n in range(12)}  # byte-identical, of photos in every part
    for copy, original in copies.items():
        (folder / "copies").mkdir(exist_ok=True)
        shutil.copy(folder / f"{original}.jpg", folder / f"{copy}.jpg")
    total = len(keys) + len(copies)
    sources = expand_shards(str(folder))
    assert sources == [f"{folder}#images={s}:{min(s + 1000, total)},of={total}" for s in range(0, total, 1000)]

    run_dir = tmp_path / "run"
    run_cli("run", folder, "--config", "exact", "--run-dir", run_dir)
    manifest = pq.read_table(run_dir / "manifest.parquet").to_pandas()
    assert len(manifest) == total and sorted(manifest["key"]) == sorted([*keys, *copies])
    assert set(manifest["shard"]) == set(sources)
    dropped = manifest[manifest["status"] != "kept"]
    assert set(dropped["key"]) <= set(copies) | set(copies.values())
    assert len(dropped) == len(copies)  # one of each planted pair, however the rule picks
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["input_samples"] == total and summary["written_samples"] == total - len(copies)

    (folder / "copies" / "0.jpg").unlink()
    shutil.rmtree(run_dir / "shards")
    (run_dir / "summary.json").unlink()
    result = run_cli("write", "--run-dir", run_dir, "--config", "exact", check=False)
    assert result.returncode == 2 and "changed" in result.stderr and "rerun" in result.stderr.lower()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_remote_shards_over_http(tmp_path):
    """fsspec URLs: the pipeline runs on shards served by a local HTTP server (127.0.0.1)."""
    served = tmp_path / "served"
    served.mkdir()
    for i in range(2):
        shutil.copy(FLICKR / f"flickr8k-224-0000{i}.tar", served / f"shard-{i}.tar")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        samples, faults = collect(f"{base}/shard-0.tar")
        assert len(samples) == 1000 and faults == []
        run_dir = tmp_path / "run"
        run_cli("run", f"{base}/shard-{{0..1}}.tar", "--config", "offline", "--run-dir", run_dir)
    finally:
        server.shutdown()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["input_samples"] == 2000 and summary["reconciles"]


@pytest.fixture
def broken_set(tmp_path):
    """One good real shard, plus every kind of broken input, each in its own shard."""
    good = tmp_path / "in" / "00-good.tar"
    good.parent.mkdir()
    shutil.copy(FLICKR / "flickr8k-224-00008.tar", good)  # 91 real photos
    real = next(iter_shard(str(FLICKR / "flickr8k-224-00000.tar"), print)).files["jpg"]  # not in the good shard
    (tmp_path / "in" / "01-bad-samples.tar").write_bytes(
        tar_bytes(
            [
                ("corrupt.jpg", b"this is not a jpeg"),
                ("corrupt.txt", b"a caption"),
                ("noimage.txt", b"caption without image"),
                ("noimage.json", b"{}"),
                ("truncjpeg.jpg", real[: len(real) // 3]),
                ("empty.jpg", b""),
                ("fine.jpg", real),
                ("fine.txt", b"ok"),
            ]
        )
    )
    whole = tar_bytes([(f"t{i}.jpg", real) for i in range(5)])
    (tmp_path / "in" / "02-truncated.tar").write_bytes(whole[: len(whole) // 2 + 700])
    (tmp_path / "in" / "03-zero.tar").write_bytes(b"")
    (tmp_path / "in" / "04-badgzip.tar.gz").write_bytes(b"\x1f\x8b\x08\x00garbage-not-gzip")
    return tmp_path


def test_bad_samples_are_recorded_and_the_run_goes_on(broken_set):
    run_dir = broken_set / "run"
    result = run_cli("run", broken_set / "in", "--config", "offline", "--run-dir", run_dir)
    assert "03-zero.tar" in result.stderr and "zero-byte" in result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["reconciles"]
    manifest = {row["key"]: row for row in pq.read_table(run_dir / "manifest.parquet").to_pylist()}
    assert manifest["corrupt"]["status"] == "unreadable" and "cannot be decoded" in manifest["corrupt"]["reason"]
    assert manifest["noimage"]["status"] == "unreadable" and "no image file" in manifest["noimage"]["reason"]
    assert manifest["truncjpeg"]["status"] == "unreadable"
    assert manifest["empty"]["status"] == "unreadable" and "empty" in manifest["empty"]["reason"]
    assert manifest["fine"]["status"] == "kept"
    truncated = [row for row in manifest.values() if row["shard"].endswith("02-truncated.tar")]
    assert {row["key"] for row in truncated} <= {f"t{i}" for i in range(5)}
    assert any(row["status"] == "unreadable" and "shard ended" in row["reason"] for row in truncated)
    unreadable_shards = {item["shard"].rsplit("/", 1)[1] for item in summary["unreadable_shards"]}
    assert unreadable_shards == {"03-zero.tar", "04-badgzip.tar.gz"}
    assert summary["kept"] >= 91


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["run", "/nonexistent/shards.tar", "--config", "offline"], 2, "does not exist"),
        (["run", "{tmp}/empty-folder", "--config", "offline"], 2, "holds no shards"),
        (["run", "{tmp}/zero.tar", "--config", "offline"], 2, "no sample"),
        (["run", "{tmp}/zero.tar", "--config", "offline", "--threshold", "1.5"], 3, "threshold must be in"),
        (["run", "{tmp}/zero.tar", "--config", "offline", "--policy", "keep-some"], 3, "unknown keep policy"),
        (["run", "{tmp}/zero.tar", "--embedder", "magic"], 3, "unknown embedder"),
        # a threshold is a cosine of one embedder: another embedder with the same number merges what it should not
        (["run", "{tmp}/zero.tar", "--embedder", "pixels"], 3, "embedder pixels needs its own: use --config offline"),
        (["run", "{tmp}/zero.tar", "--set", "embed.embedder=clip"], 3, "use --config clip (made for it)"),
        (["run", "{tmp}/zero.tar", "--embedder", "pixels", "--threshold", "0.97"], 2, "no sample"),  # a chosen one
        (["run", "{tmp}/zero.tar", "--embedder", "pixels", "--set", "find.threshold=0.97"], 2, "no sample"),
        (["find", "--run-dir", "{tmp}/pixels-run"], 3, "these embeddings were made by pixels, which needs its own"),
        (
            ["purge", "{tmp}/zero.tar", "--against", "{tmp}/zero.tar", "--set", "embed.embedder=pixels"],
            3,
            "--config offline",
        ),
        (["run", "{tmp}/zero.tar", "--set", "find.treshold=0.9"], 3, "unknown key 'treshold'"),
        (["run", "{tmp}/zero.tar", "--config", "offline", "--out", "{tmp}"], 3, "outside the input"),
        (["find", "--run-dir", "{tmp}/nothing-here"], 2, "run `dedup embed` first"),
    ],
)
def test_unusable_input_and_settings_give_clear_errors(tmp_path, args, code, words):
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "zero.tar").write_bytes(b"")
    if "{tmp}/pixels-run" in args:
        (tmp_path / "one.tar").write_bytes(tar_bytes([("a.jpg", jpeg_bytes())]))
        run_cli("embed", tmp_path / "one.tar", "--run-dir", tmp_path / "pixels-run", "--config", "offline")
    result = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args], check=False)
    assert result.returncode == code, result.stderr
    assert words in result.stderr, result.stderr
    assert any(line.startswith("error: ") for line in result.stderr.splitlines()), result.stderr


@pytest.mark.slow
def test_missing_clip_weights_fail_fast_with_instructions(tmp_path):
    (tmp_path / "s.tar").write_bytes(tar_bytes([("a.jpg", jpeg_bytes())]))
    result = run_cli(
        "embed",
        tmp_path / "s.tar",
        "--run-dir",
        tmp_path / "run",
        "--embedder",
        "clip",
        check=False,
        env={"HF_HOME": str(tmp_path / "empty-cache")},
    )
    assert result.returncode == 4
    assert "--pretrained /path/to/" in result.stderr and "--config offline" in result.stderr
    assert not (tmp_path / "run").exists()


def test_expand_reports_missing_path():
    with pytest.raises(InputError, match="does not exist"):
        expand_shards("/no/such/shard.tar")


def test_log_json_records_every_stage(tmp_path):
    log = tmp_path / "events.jsonl"
    run_cli(
        "--quiet",
        "--log-json",
        log,
        "run",
        FLICKR / "flickr8k-224-00008.tar",
        "--config",
        "offline",
        "--run-dir",
        tmp_path / "run",
    )
    events = [json.loads(line) for line in log.read_text().splitlines()]
    starts = [e["stage"] for e in events if e["event"] == "stage_start"]
    assert starts == ["embed", "find: embedding search", "write"]
    assert all(
        e["event"] in ("stage_start", "stage_end", "progress", "info", "warning", "find_done", "write_done")
        for e in events
    )
    done = next(e for e in events if e["event"] == "write_done")
    assert done["input_samples"] == 91 and done["reconciles"] is True
    progress = [e for e in events if e["event"] == "progress" and e["stage"] == "embed"]
    assert progress and progress[-1]["samples"] == 91 and progress[-1]["samples_per_s"] > 0


def test_errors_are_logged_as_json_too(tmp_path):
    log = tmp_path / "events.jsonl"
    result = run_cli("--log-json", log, "run", "/no/such.tar", check=False)
    assert result.returncode == 2
    event = json.loads(log.read_text().splitlines()[-1])
    assert event["event"] == "error" and event["exit_code"] == 2 and "does not exist" in event["message"]
