"""The pipeline definitions in pipelines/, run end to end as a data team would run them (the file, with its
typer options) and imported as modules, on shared data with near-copies of the eval set planted in the
training set."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from conftest import CIFAR, IMG2DATASET, ROOT, shard_head, tar_bytes

from dedup.io.reader import iter_shard

EVAL_COPIES = 6
SUBSET = 2_000  # samples of each CIFAR-10 shard the file pipeline reads: its stages, not its scale, are under test


def _copies_of_eval_images(eval_shard, out_shard, count: int) -> list[str]:
    """A training shard holding exact copies of the first `count` eval images; returns their keys."""
    members, keys = [], []
    for sample in iter_shard(str(eval_shard), print):
        key = f"copy-of-{sample.key}"
        members += [(f"{key}.jpg", sample.files["jpg"]), (f"{key}.txt", b"an eval image in the training set")]
        keys.append(key)
        if len(keys) == count:
            break
    out_shard.write_bytes(tar_bytes(members))
    return keys


def _run(*args, cwd):
    result = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.mark.slow
def test_dedup_and_decontaminate_as_a_file(tmp_path, shared):
    eval_shard, train_shard = tmp_path / "eval.tar", tmp_path / "train.tar"
    shard_head(CIFAR / "cifar10-test-00005.tar.gz", eval_shard, SUBSET)
    shard_head(CIFAR / "cifar10-train-00000.tar.gz", train_shard, SUBSET)
    planted = _copies_of_eval_images(eval_shard, tmp_path / "contaminated.tar", EVAL_COPIES)
    train = [str(train_shard), str(tmp_path / "contaminated.tar")]
    result = _run(
        ROOT / "pipelines" / "dedup_and_decontaminate.py",
        *train,
        "--eval",
        eval_shard,
        "--run-dir",
        tmp_path / "run",
        "--quiet",
        cwd=tmp_path,
    )
    manifest = pq.read_table(tmp_path / "run" / "manifest.parquet").to_pylist()
    assert len(manifest) == SUBSET + EVAL_COPIES
    purged = {row["key"] for row in manifest if row.get("reference_match")}
    assert set(planted) <= purged
    assert result["summary"]["reconciles"] and result["summary"]["written_samples"] == result["summary"]["kept"]
    assert (tmp_path / "run" / "report.html").is_file()


@pytest.mark.slow
def test_web_corpus_imported_and_called(served_images, tmp_path):
    if not IMG2DATASET.exists():
        pytest.fail("img2dataset's environment is missing: run `make img2dataset` (make setup does)")
    sys.path.insert(0, str(ROOT))
    try:
        from pipelines.web_corpus import pipeline
    finally:
        sys.path.remove(str(ROOT))
    from dedup.settings import DownloadSettings

    url_list, good = served_images
    eval_images = tmp_path / "eval"
    eval_images.mkdir()
    for served in sorted((tmp_path / "www").glob("*.jpg"))[:3]:  # three of the photos are also eval images
        if served.name != "broken.jpg":
            (eval_images / served.name).write_bytes(served.read_bytes())
    settings = DownloadSettings(processes=1, threads=4, image_size=128, retries=0, timeout=5, resize_mode="no")
    result = pipeline(url_list, [str(eval_images)], tmp_path / "run", "offline", settings)
    assert result["download"]["downloaded"] == good
    manifest = pq.read_table(tmp_path / "run" / "manifest.parquet").to_pylist()
    assert len(manifest) == good
    assert sum(1 for row in manifest if row.get("reference_match")) == len(list(eval_images.iterdir()))
    assert result["summary"]["reconciles"]
