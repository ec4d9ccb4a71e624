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
    *args: str, cwd: Path | None = None, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the CLI as a user would, in a subprocess (by default in a fresh temporary folder)."""
    full_env = {**os.environ, **(env or {})}
    if cwd is None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="dedup-cli-") as scratch:
            return run_cli(*args, cwd=Path(scratch), check=check, env=env)
    result = subprocess.run(
        [*DEDUP, *map(str, args)], cwd=cwd, capture_output=True, text=True, env=full_env, timeout=900
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"dedup {' '.join(map(str, args))} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


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
