"""Shared fixtures: real images from ../shared/data, with planted duplicates whose ground truth we know."""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FLICKR = SHARED / "flickr8k"
CIFAR = SHARED / "cifar10"
IMAGENETTE = SHARED / "imagenette"
DEDUP = [sys.executable, "-m", "dedup.cli"]
IMG2DATASET = ROOT / ".venv-img2dataset" / "bin" / "python"


def require_shared() -> Path:
    if not FLICKR.is_dir() or not CIFAR.is_dir():
        raise RuntimeError(f"the tests need the shared real images at {SHARED} (see ../shared/data/README.md)")
    return SHARED


@pytest.fixture(scope="session")
def shared() -> Path:
    return require_shared()


def run_cli(
    *args: str, cwd: Path | None = None, check: bool = True, env: dict | None = None, process: bool = False
) -> subprocess.CompletedProcess:
    """Run the CLI as a user would (by default in a fresh temporary folder): its arguments parsed, its exit code and
    its stdout and stderr returned. In this test process (typer's runner) unless `process`: a process of its own
    pays ~6-10 s of imports (torch, diffusers) that the suite would pay a hundred times; `process=True` where what
    is under test is the process itself (its imports, its signals, its inherited environment)."""
    if cwd is None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="dedup-cli-") as scratch:
            return run_cli(*args, cwd=Path(scratch), check=check, env=env, process=process)
    result = (_in_a_process if process else _in_this_process)([str(a) for a in args], cwd, env or {})
    if check and result.returncode != 0:
        raise AssertionError(
            f"dedup {' '.join(map(str, args))} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def _in_a_process(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*DEDUP, *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **env}, timeout=900
    )


def _in_this_process(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """The command through typer's runner, with the working folder and environment a subprocess would have had,
    restored after it (and torch's thread count, which training sets)."""
    import traceback

    from typer.testing import CliRunner

    from dedup.cli import app

    threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    previous_cwd, previous_env = Path.cwd(), dict(os.environ)
    os.chdir(cwd)
    os.environ.update(env)
    try:
        result = CliRunner().invoke(app, args, catch_exceptions=True)
    finally:
        os.chdir(previous_cwd)
        os.environ.clear()
        os.environ.update(previous_env)
        if threads is not None:
            sys.modules["torch"].set_num_threads(threads)
    stderr = result.stderr
    if result.exc_info is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
    return subprocess.CompletedProcess(["dedup", *args], result.exit_code, result.stdout, stderr)


@pytest.fixture(scope="session")
def planted_flickr(tmp_path_factory, shared):
    """Three Flickr8k shards (3,000 photos) with 120 sources planted 1-3 times across shards."""
    from dedup.tools.planting import plant

    out = tmp_path_factory.mktemp("planted-flickr")
    planted = plant(
        [str(FLICKR / f"flickr8k-224-{i:05d}.tar") for i in range(3)], out, sources=120, copies=(1, 3), seed=7
    )
    return out, planted


@pytest.fixture(scope="session")
def planted_flickr_small(tmp_path_factory, shared):
    """Three Flickr8k shards of 200 photos, 40 sources planted 1-3 times across them: for tests whose cost is
    per command (a model or a cluster started), not per photo."""
    from dedup.tools.planting import plant

    out = tmp_path_factory.mktemp("planted-flickr-small")
    shards = [str(FLICKR / f"flickr8k-224-{i:05d}.tar") for i in range(3)]
    planted = plant(shards, out, sources=40, copies=(1, 3), seed=21, limit=600, shard_size=200)
    assert len(planted.shards) == 3
    return out, planted


def tar_bytes(members: list[tuple[str, bytes]], gzip: bool = False) -> bytes:
    """A tar archive in memory from (name, data) pairs."""
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gzip else "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def shard_head(shard, out_shard: Path, count: int) -> Path:
    """The first `count` samples of `shard`, written as a shard of their own (a smaller copy of shared data)."""
    import itertools

    from dedup.io.reader import iter_shard

    members = []
    for sample in itertools.islice(iter_shard(str(shard), print), count):
        members += [(f"{sample.key}.{extension}", data) for extension, data in sample.files.items()]
    out_shard.write_bytes(tar_bytes(members))
    return out_shard


def jpeg_bytes(color=(200, 30, 30), size=(64, 48)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def clip_retrieval_store(folder, vectors: np.ndarray, part_rows: int) -> None:
    """The vectors as a clip-retrieval store of float16 parts."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    for part, start in enumerate(range(0, len(vectors), part_rows)):
        np.save(folder / "img_emb" / f"img_emb_{part}.npy", vectors[start : start + part_rows].astype(np.float16))
        pq.write_table(
            pa.table({"key": [str(i) for i in range(start, min(start + part_rows, len(vectors)))]}),
            folder / "metadata" / f"metadata_{part}.parquet",
        )


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served_images(tmp_path):
    """40 Flickr8k photos, a broken JPEG and 5 dead links as a URL list served on 127.0.0.1."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dedup.io.reader import iter_shard

    folder = tmp_path / "www"
    folder.mkdir()
    captions = {}
    for sample in iter_shard(str(FLICKR / "flickr8k-224-00006.tar"), print):
        (folder / f"{sample.key}.jpg").write_bytes(sample.files["jpg"])
        captions[sample.key] = sample.files["txt"].decode()
        if len(captions) == 40:
            break
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is a broken jpeg")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    rows = [{"url": f"{base}/{key}.jpg", "caption": caption} for key, caption in captions.items()]
    rows += [{"url": f"{base}/missing-{i}.jpg", "caption": "dead link"} for i in range(5)]
    rows += [{"url": f"{base}/broken.jpg", "caption": "broken image"}]
    url_list = tmp_path / "urls.parquet"
    pq.write_table(pa.Table.from_pylist(rows), url_list)
    yield url_list, len(captions)
    server.shutdown()
