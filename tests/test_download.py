"""`dedup download`: a URL list served on 127.0.0.1 becomes shards that `dedup run` accepts; dead links and
broken images are counted, not fatal."""

from __future__ import annotations

import json

import pytest
from conftest import IMG2DATASET, run_cli


@pytest.mark.slow
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
