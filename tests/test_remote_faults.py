"""Shards read over HTTP from a server that fails on purpose (tests/faulty_http.py): 503s, 429s, stalls and
connections dropped mid-shard. The run must finish with the manifest a run from local copies gives; a shard that
fails on every try is reported unreadable with its reason, and the others go through."""

from __future__ import annotations

import io
import json
import time

import pyarrow.parquet as pq
import pytest
from conftest import FLICKR, run_cli
from faulty_http import Faults, FaultyServer

from dedup.io.remote import RemoteReadError, ResilientRemoteFile, RetryPolicy

COMPARED = ["key", "shard_index", "sample_index", "status", "group_id", "group_size", "rank", "kept_key", "match"]
FAST_RETRIES = [
    "--set",
    "embed.remote_timeout=0.5",
    "--set",
    "embed.remote_backoff=0.02",
    "--set",
    "embed.remote_tries=10",
]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, shared):
    from dedup.tools.planting import plant

    folder = tmp_path_factory.mktemp("remote")
    plant(
        [str(FLICKR / "flickr8k-224-00005.tar")],
        folder / "shards",
        sources=30,
        copies=(1, 3),
        seed=5,
        limit=300,
        shard_size=110,
    )
    names = sorted(p.name for p in (folder / "shards").glob("*.tar"))
    run_cli("run", folder / "shards", "--run-dir", folder / "local", "--config", "hashes")
    return folder, names


def manifest_rows(run_dir) -> list[dict]:
    return pq.read_table(run_dir / "manifest.parquet", columns=COMPARED).to_pylist()


@pytest.mark.parametrize(
    "ranges", [pytest.param(True, marks=pytest.mark.slow), False], ids=["resumes-by-range", "restarts-without-ranges"]
)
def test_a_run_through_faults_gives_the_local_manifest(local_run, tmp_path, ranges):
    folder, names = local_run
    faults = Faults(ranges=ranges, dropped=0.35, stalled=0.08, seed=3 if ranges else 4, stall_s=1.0, lifetime_s=300)
    started = time.monotonic()
    with FaultyServer(folder / "shards", faults) as server:
        run_cli(
            "run",
            *[server.url(n) for n in names],
            "--run-dir",
            tmp_path / "remote",
            "--config",
            "hashes",
            *FAST_RETRIES,
        )
    seconds = time.monotonic() - started
    assert manifest_rows(tmp_path / "remote") == manifest_rows(folder / "local")
    summary = json.loads((tmp_path / "remote" / "summary.json").read_text())
    assert summary["reconciles"] and not summary["unreadable_shards"]
    counts = faults.counts
    assert counts.get("dropped", 0) >= 2 and counts.get("503", 0) + counts.get("429", 0) >= 2, counts
    assert counts["requests"] < 400 and seconds < 240, (counts, seconds)


@pytest.mark.slow
def test_a_shard_that_fails_every_time_is_unreadable_and_the_rest_go_through(local_run, tmp_path):
    folder, names = local_run
    (folder / "shards" / "dead-00000.tar").write_bytes((folder / "shards" / names[0]).read_bytes())
    faults = Faults(unavailable=0.05, throttled=0.0, dropped=0.05, stalled=0.0, seed=7, lifetime_s=300)
    with FaultyServer(folder / "shards", faults) as server:
        urls = [server.url(n) for n in names] + [server.url("dead-00000.tar")]
        result = run_cli("run", *urls, "--run-dir", tmp_path / "remote", "--config", "hashes", *FAST_RETRIES)
    summary = json.loads((tmp_path / "remote" / "summary.json").read_text())
    assert summary["reconciles"]
    assert summary["input_samples"] == len(manifest_rows(folder / "local"))
    (dead,) = summary["unreadable_shards"]
    assert dead["shard"].endswith("dead-00000.tar")
    assert "HTTP 503" in dead["reason"] and "tried again on the next run" in dead["reason"]
    assert "dead-00000.tar" in result.stderr
    stats = [json.loads(p.read_text()) for p in (tmp_path / "remote" / "embeddings" / "stats").glob("*.json")]
    assert [s["retry_on_rerun"] for s in stats].count(True) == 1


class FlakyBytes:
    """A file-like object whose reads fail at set byte positions, to drive ResilientRemoteFile directly."""

    def __init__(self, data: bytes, start: int, fail_at: set[int], events: list):
        self.stream, self.fail_at, self.events = io.BytesIO(data[start:]), fail_at, events
        self.offset = start

    def read(self, size: int) -> bytes:
        for cut in sorted(self.fail_at):
            if self.offset <= cut < self.offset + size:
                chunk = self.stream.read(cut - self.offset)
                if chunk:
                    self.offset += len(chunk)
                    return chunk
                self.fail_at.discard(cut)
                self.events.append(("dropped", self.offset))
                raise ConnectionResetError("dropped by the test")
        chunk = self.stream.read(size)
        self.offset += len(chunk)
        return chunk

    def seek(self, offset: int) -> None:
        self.stream.seek(0)
        self.offset = offset

    def close(self) -> None:
        pass


def bare_remote(size: int) -> ResilientRemoteFile:
    """A ResilientRemoteFile of `size` bytes with no filesystem behind it: a test gives it `_open_at`."""
    remote = ResilientRemoteFile.__new__(ResilientRemoteFile)
    io.RawIOBase.__init__(remote)
    remote.url, remote.policy, remote._sleep = (
        "s3://bucket/shard.tar",
        RetryPolicy(tries=3, backoff_s=0),
        lambda s: None,
    )
    remote.size, remote.position, remote.ranges, remote.failures, remote.restarts = size, 0, None, 0, 0
    remote._stream = None
    return remote


def test_resume_reads_every_byte_once_in_order(monkeypatch):
    data = bytes(range(256)) * 4096  # 1 MiB
    events: list = []
    fail_at = {70_000, 300_001, 900_000}
    remote = bare_remote(len(data))
    opened: list[int] = []

    def open_at(position: int):
        opened.append(position)
        return FlakyBytes(data, position, fail_at, events)

    monkeypatch.setattr(remote, "_open_at", open_at)
    read = io.BufferedReader(remote, buffer_size=65_536).read()
    assert read == data
    assert opened == [0, 70_000, 300_001, 900_000] and remote.failures == 3


def test_a_fault_that_cannot_pass_stops_at_once():
    remote = bare_remote(10)

    def missing(position: int):
        raise FileNotFoundError("s3://bucket/shard.tar")

    remote._open_at = missing  # type: ignore[method-assign]
    with pytest.raises(FileNotFoundError):
        remote.read(10)
    assert remote.failures == 0

    def always_503(position: int):
        error = OSError("unavailable")
        error.status = 503  # type: ignore[attr-defined]
        raise error

    remote._open_at = always_503  # type: ignore[method-assign]
    with pytest.raises(RemoteReadError, match="gave up after 3 tries"):
        remote.read(10)


class BreakingUploads:
    """A memory filesystem that is not an object store (uploads land under a temporary name, then are renamed),
    whose uploads can be made to fail: `fail(name_part, times, transient)` breaks the next uploads of a file
    whose name contains `name_part`, after writing half of it."""

    registered = False

    @classmethod
    def install(cls):
        import fsspec
        from fsspec.implementations.memory import MemoryFileSystem

        class Faulty(MemoryFileSystem):
            protocol = "faultyfs"
            store: dict = {}
            pseudo_dirs = [""]
            failures: list = []

            def put_file(self, lpath, rpath, *args, **kwargs):
                for failure in list(self.failures):
                    if failure["part"] in str(lpath) and failure["times"] > 0:
                        failure["times"] -= 1
                        data = open(lpath, "rb").read()
                        self.pipe_file(rpath, data[: len(data) // 2])  # a broken upload leaves half an object
                        raise (ConnectionResetError if failure["transient"] else PermissionError)("upload broken")
                return super().put_file(lpath, rpath, *args, **kwargs)

        fsspec.register_implementation("faultyfs", Faulty, clobber=True)
        return Faulty


def test_output_to_a_remote_folder_is_whole_or_absent(local_run, tmp_path):
    import shutil

    from dedup.errors import DedupError
    from dedup.settings import WriteSettings
    from dedup.stages.write import write

    folder, _ = local_run
    run_dir = tmp_path / "run"
    shutil.copytree(folder / "local", run_dir, ignore=shutil.ignore_patterns("shards", "summary.json"))
    faulty = BreakingUploads.install()
    faulty.store.clear()
    faulty.failures[:] = [
        {"part": "dedup-00000.tar", "times": 1, "transient": True},  # retried, then whole
        {"part": "dedup-00002.tar", "times": 1, "transient": False},  # stops the write
    ]
    settings = WriteSettings(samples_per_shard=100)
    url = "faultyfs://bucket/out"
    with pytest.raises((PermissionError, DedupError)):
        write(run_dir / "embeddings", run_dir, url, settings)
    staging = run_dir / "shards-staging"
    for path, data in faulty.store.items():
        name = path.rsplit("/", 1)[-1]
        if not name.startswith(".tmp-"):  # everything under a final name is whole
            assert data.getvalue() == (staging / name).read_bytes(), name
    final = {path.rsplit("/", 1)[-1] for path in faulty.store}
    assert "dedup-00000.tar" in final and "dedup-00002.tar" not in final and "dedup-00002_stats.json" not in final

    summary = write(run_dir / "embeddings", run_dir, url, settings)  # the rerun finishes the publish
    published = {path.rsplit("/", 1)[-1]: data.getvalue() for path, data in faulty.store.items()}
    assert not [name for name in published if name.startswith(".tmp-")]
    tars = sorted(name for name in published if name.endswith(".tar"))
    assert tars == sorted(p.name for p in staging.glob("*.tar")) and len(tars) >= 3
    assert all(published[name] == (staging / name).read_bytes() for name in tars)
    assert summary["reconciles"] and summary["output_dir"] == url and summary["published"] >= 1
