"""The model-based embedders, tested for their mechanics with weights the tests save themselves."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import FLICKR, jpeg_bytes, run_cli, tar_bytes
from PIL import Image

from dedup.embedders import build_embedder
from dedup.errors import ModelUnavailableError, SettingsError
from dedup.io.imaging import decode
from dedup.io.reader import iter_shard
from dedup.io.store import EmbeddingStore

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny open_clip architecture and a checkpoint of its random weights, saved as users save theirs."""
    import open_clip

    folder = tmp_path_factory.mktemp("tiny-clip")
    config = folder / "tiny-clip-test.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(str(config))
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip-test")
    checkpoint = folder / "tiny.pt"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    return config, checkpoint


def some_images(count=8):
    images = []
    for sample in iter_shard(str(FLICKR / "flickr8k-224-00008.tar"), print):
        images.append(decode(sample.files).image)
        if len(images) == count:
            return images


def test_clip_loads_local_checkpoint_and_embeds(tiny_clip):
    config, checkpoint = tiny_clip
    embedder = build_embedder(
        "clip", model="tiny-clip-test", pretrained=str(checkpoint), model_config=str(config), text=True
    )
    assert embedder.device == "cpu" and embedder.precision == "fp32"
    images = some_images()
    vectors = embedder.embed([embedder.prepare(image) for image in images])
    assert vectors.shape == (8, 32) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors[0], embedder.embed([embedder.prepare(images[0])])[0], atol=1e-5)
    text = embedder.embed_texts(["a dog", "a cat"])
    assert text.shape == (2, 32)
    # the checkpoint's weights are the ones used, not a fresh random init, and open_clip's own
    # per-image preprocessing gives what the batched normalization gives (a grey, wide image too)
    import open_clip

    reference, _, preprocess = open_clip.create_model_and_transforms("tiny-clip-test", pretrained=str(checkpoint))
    images = images + [images[0].convert("L").resize((300, 120))]
    with torch.inference_mode():
        expected = reference.eval().encode_image(torch.stack([preprocess(image) for image in images]))
        expected = torch.nn.functional.normalize(expected, dim=-1).numpy()
    got = embedder.embed([embedder.prepare(image) for image in images])
    assert np.allclose(got, expected, atol=1e-5)


def test_clip_onnx_runtime_agrees_with_torch_and_is_cached(tiny_clip, tmp_path, monkeypatch):
    """runtime onnx exports the image tower once (cached by the weights) and embeds as torch does;
    onnx-int8 is kept only where it agrees to cosine >= 0.99, otherwise refused with the reason."""
    from dedup.errors import SettingsError

    monkeypatch.setenv("DEDUP_CACHE", str(tmp_path / "cache"))
    config, checkpoint = tiny_clip
    options = dict(model="tiny-clip-test", pretrained=str(checkpoint), model_config=str(config))
    images = some_images()
    torch_embedder = build_embedder("clip", **options)
    reference = torch_embedder.embed([torch_embedder.prepare(image) for image in images])
    onnx_embedder = build_embedder("clip", runtime="onnx", **options)
    vectors = onnx_embedder.embed([onnx_embedder.prepare(image) for image in images])
    assert (vectors * reference).sum(axis=1).min() >= 0.9999
    assert onnx_embedder.spec()["runtime"] == "onnx"
    exported = list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert len(exported) == 1
    before = exported[0].stat().st_mtime_ns
    build_embedder("clip", runtime="onnx", **options)
    assert exported[0].stat().st_mtime_ns == before  # reused, not exported again
    int8 = build_embedder("clip", runtime="onnx-int8", **options)
    quantized = int8.embed([int8.prepare(image) for image in images])
    assert (quantized * reference).sum(axis=1).min() >= 0.99
    from dedup.embedders import onnx_tower

    monkeypatch.setattr(onnx_tower, "MIN_COSINE", 1.0)  # no int8 tower agrees exactly: refused, with the reason
    with pytest.raises(SettingsError, match=r"cosine 0\.9\d+ \(< 1\.0\).*runtime onnx"):
        build_embedder("clip", runtime="onnx-int8", **options)


@pytest.mark.slow
def test_clip_embed_stage_writes_clip_retrieval_layout(tiny_clip, tmp_path):
    config, checkpoint = tiny_clip
    run_cli(
        "embed",
        FLICKR / "flickr8k-224-00008.tar",
        "--run-dir",
        tmp_path,
        "--embedder",
        "clip",
        "--model",
        "tiny-clip-test",
        "--model-config",
        config,
        "--pretrained",
        checkpoint,
        "--text",
    )
    store = tmp_path / "embeddings"
    images = np.load(store / "img_emb" / "img_emb_0.npy")
    texts = np.load(store / "txt_emb" / "txt_emb_0.npy")
    assert images.shape == texts.shape == (91, 32)
    loaded = EmbeddingStore(store).load()
    assert loaded.metadata.column_names[:2] == ["key", "shard"] and len(loaded.metadata) == 91
    assert json.loads((store / "embed.json").read_text())["embedder"]["model"] == "tiny-clip-test"


def test_clip_refuses_unknown_things(tiny_clip, tmp_path):
    config, _ = tiny_clip
    with pytest.raises(SettingsError, match="unknown open_clip architecture"):
        build_embedder("clip", model="ViT-Nope", pretrained="x")
    with pytest.raises(SettingsError, match="no pretrained tag"):
        build_embedder("clip", model="ViT-B-32", pretrained="not-a-tag")
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        build_embedder(
            "clip", model="tiny-clip-test", model_config=str(config), pretrained=str(tmp_path / "missing.pt")
        )
    with pytest.raises(SettingsError, match="never used silently"):
        build_embedder("clip", model="tiny-clip-test", model_config=str(config), pretrained=None)


class TinyEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 5, stride=4)
        self.head = torch.nn.Linear(16, 24)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_exported_model_torchscript_and_onnx_agree(tmp_path):
    torch.manual_seed(0)
    encoder = TinyEncoder().eval()
    example = torch.zeros(1, 3, 96, 96)
    torchscript = tmp_path / "encoder.pt"
    torch.jit.trace(encoder, example).save(str(torchscript))
    onnx_path = tmp_path / "encoder.onnx"
    torch.onnx.export(
        encoder,
        example,
        str(onnx_path),
        input_names=["image"],
        output_names=["embedding"],
        dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}},
        dynamo=False,
    )
    images = some_images(4)
    results = []
    for path in (torchscript, onnx_path):
        embedder = build_embedder("model", model_path=str(path), input_size=96)
        assert embedder.dim == 24
        results.append(embedder.embed([embedder.prepare(image) for image in images]))
    assert np.allclose(results[0], results[1], atol=1e-4)
    assert np.allclose(np.linalg.norm(results[0], axis=1), 1.0, atol=1e-5)
    with pytest.raises(ModelUnavailableError):
        build_embedder("model", model_path=str(tmp_path / "nothing.onnx"))


class RawPixelEncoder(torch.nn.Module):
    """As SSCD's uint8 exports: NHWC uint8 in, ImageNet normalisation inside."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x):
        pixels = x.permute(0, 3, 1, 2).float() / 255.0
        return self.encoder((pixels - self.mean) / self.std)


def test_exported_model_with_uint8_nhwc_input_gets_raw_pixels(tmp_path):
    torch.manual_seed(0)
    encoder = TinyEncoder().eval()
    float_path, raw_path = tmp_path / "float.pt", tmp_path / "raw.onnx"
    torch.jit.trace(encoder, torch.zeros(1, 3, 96, 96)).save(str(float_path))
    torch.onnx.export(
        RawPixelEncoder(encoder).eval(),
        torch.zeros(1, 96, 96, 3, dtype=torch.uint8),
        str(raw_path),
        input_names=["image"],
        dynamic_axes={"image": {0: "batch"}},
        dynamo=False,
    )
    images = some_images(3)
    float_model = build_embedder("model", model_path=str(float_path), input_size=96)
    raw_model = build_embedder("model", model_path=str(raw_path), input_size=96)
    assert (float_model.spec()["layout"], raw_model.spec()["layout"]) == ("nchw-float", "nhwc-uint8")
    assert raw_model.prepare(images[0]).dtype == np.uint8
    vectors = [m.embed([m.prepare(image) for image in images]) for m in (float_model, raw_model)]
    assert np.allclose(vectors[0], vectors[1], atol=1e-4)


def test_exported_model_of_the_wrong_shape_stops_with_exit_4(tmp_path):
    feature_map = torch.nn.Conv2d(3, 8, 3).eval()  # returns (batch, 8, h, w), not (batch, dim)
    path = tmp_path / "feature-map.pt"
    torch.jit.trace(feature_map, torch.zeros(1, 3, 32, 32)).save(str(path))
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    shard = tmp_path / "in.tar"
    shard.write_bytes(tar_bytes([("a.jpg", jpeg_bytes())]))
    for model, expected in ((path, "returns shape (1, 8, 30, 30)"), (tmp_path / "garbage.onnx", "not a loadable ONNX")):
        result = run_cli(
            "embed", shard, "--run-dir", tmp_path / "run", "--embedder", "model", "--model-path", model,
            "--input-size", "32", check=False,
        )  # fmt: skip
        assert result.returncode == 4, result.stderr
        assert expected in " ".join(result.stderr.split())


def test_pixels_embedder_is_brightness_invariant():
    from PIL import ImageEnhance

    embedder = build_embedder("pixels", pixel_size=8)
    image = some_images(1)[0]
    brighter = ImageEnhance.Brightness(image).enhance(1.2)
    a, b = embedder.embed([embedder.prepare(image), embedder.prepare(brighter)])
    assert embedder.dim == 192 and float(a @ b) > 0.98


def test_decode_size_hashes_a_reduced_jpeg_and_a_store_keeps_one_size(tmp_path, shared):
    """embed.decode_size (the hash-only preset's speed): a JPEG is decoded at a DCT scale, its recorded size is
    its own, and a store embedded at one size refuses another instead of mixing hashes."""
    sample = next(iter_shard(str(FLICKR / "flickr8k-224-00004.tar"), print))
    full, reduced = decode(sample.files), decode(sample.files, decode_size=64)
    assert full.image.size == (224, 224) and reduced.image.size == (112, 112)
    assert (reduced.width, reduced.height) == (224, 224) and reduced.sha256 == full.sha256
    own = np.unpackbits(full.pdq[0]) != np.unpackbits(reduced.pdq[0])
    assert own.sum() < 32  # the same photo to PDQ, at either size

    shard = FLICKR / "flickr8k-224-00008.tar"
    run_cli("embed", shard, "--config", "hashes", "--run-dir", tmp_path / "run")
    spec = EmbeddingStore(tmp_path / "run" / "embeddings").read_spec()
    assert spec["decode_size"] == 64
    result = run_cli(
        "embed", shard, "--config", "hashes", "--run-dir", tmp_path / "run", "--set", "embed.decode_size=off",
        check=False,
    )  # fmt: skip
    assert result.returncode == 3 and "decode_size" in result.stderr  # a settings error


def test_large_photos_are_decoded_reduced_and_their_copies_still_found(tmp_path, shared):
    """The default decodes a large JPEG at a DCT scale (embed at >= 256 px, verification at >= 320): photos of
    900-1,300 px and their cropped, resized and mirrored copies are found as at full size, nothing else merged."""
    with tarfile.open(FLICKR / "flickr8k-224-00006.tar") as archive:
        photos = [(m.name[:-4], archive.extractfile(m).read()) for m in archive if m.name.endswith(".jpg")][:40]
    folder = tmp_path / "photos"
    folder.mkdir()
    pairs = []
    for number, (key, data) in enumerate(photos):
        side = 900 + 10 * number
        large = Image.open(io.BytesIO(data)).convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
        large.save(folder / f"{key}.jpg", quality=90)
        inner = (side * 3 // 20, side // 10, side * 17 // 20, side * 4 // 5)  # 70 % of the width, 70 % of the height
        copy = {
            0: large.crop(inner),
            1: large.crop(inner).resize((side * 2 // 5, side * 2 // 5)),
            2: large.crop(inner).transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        }.get(number % 4)
        if copy is not None:
            copy.save(folder / f"{key}-copy.jpg", quality=80)
            pairs.append((key, f"{key}-copy"))
    run_cli("run", folder, "--run-dir", tmp_path / "run")
    assert EmbeddingStore(tmp_path / "run" / "embeddings").read_spec()["decode_size"] == 256
    rows = pq.read_table(tmp_path / "run" / "groups.parquet", columns=["key", "group_id", "group_size"]).to_pylist()
    group = {row["key"]: row["group_id"] for row in rows}
    assert all(group[a] == group[b] for a, b in pairs)
    assert sum(row["group_size"] > 1 for row in rows) == 2 * len(pairs)  # nothing else merged
    signals = pq.read_table(tmp_path / "run" / "pairs.parquet", columns=["signal"])["signal"].to_pylist()
    assert signals.count("verified") >= len(pairs) // 2  # what was read again for verification counted
