"""`dedup download`: a URL list served on 127.0.0.1 becomes shards that `dedup run` accepts; dead links and
broken images are counted, not fatal."""

from __future__ import annotations

import functools
import http.server
import json
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FLICKR, ROOT, run_cli

from dedup.io.reader import iter_shard

IMG2DATASET = ROOT / ".venv-img2dataset" / "bin" / "python"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served_images(tmp_path):
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


def test_download_then_run(served_images, tmp_path):
    if not IMG2DATASET.exists():
        pytest.fail("img2dataset's environment is missing: run `make img2dataset` (make setup does)")
    url_list, good = served_images
    out = tmp_path / "shards"
    result = run_cli(
        "download",
        url_list,
        out,
        "--processes",
        "1",
        "--threads",
        "4",
        "--image-size",
        "128",
        "--samples-per-shard",
        "20",
        "--retries",
        "0",
        "--timeout",
        "5",
        "--img2dataset-python",
        IMG2DATASET,
    )
    summary = json.loads((out / "download.json").read_text())
    assert summary["urls"] == good + 6
    assert summary["downloaded"] == good
    assert summary["failed_to_download"] == 5 and summary["failed_to_resize"] == 1
    assert len(summary["shards"]) >= 2
    run_dir = tmp_path / "run"
    run_cli("run", out, "--config", "offline", "--run-dir", run_dir)
    dedup_summary = json.loads((run_dir / "summary.json").read_text())
    assert dedup_summary["input_samples"] == good and dedup_summary["reconciles"]
    assert "download:" in result.stderr


def test_download_refuses_a_missing_list(tmp_path):
    result = run_cli(
        "download", tmp_path / "nope.parquet", tmp_path / "out", "--img2dataset-python", IMG2DATASET, check=False
    )
    assert result.returncode in (2, 3) and "error:" in result.stderr
