"""Images/s of `dedup embed` for each embedder on Flickr8k shards (224x224 JPEGs), on this machine.

CLIP and the exported model use random weights saved locally (no weights can be downloaded here); speed
does not depend on the weight values. The `model` embedder runs a TorchScript ResNet-50, the backbone of
SSCD, the copy-detection model memorization studies use.

    .venv/bin/python benchmarks/embed_throughput.py --shards 2
    .venv/bin/python benchmarks/embed_throughput.py --shards 1 --only clip   # torch vs ONNX Runtime fp32 / int8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
FLICKR = ROOT.parent / "shared" / "data" / "flickr8k"


def clip_checkpoint(folder: Path, model: str) -> str:
    import open_clip

    path = folder / f"{model}-random.pt"
    torch.save(open_clip.create_model(model).state_dict(), path)
    return str(path)


def resnet50_torchscript(folder: Path) -> str:
    import torchvision

    path = folder / "resnet50-random.pt"
    model = torchvision.models.resnet50(num_classes=512).eval()
    torch.jit.trace(model, torch.zeros(1, 3, 224, 224)).save(str(path))
    return str(path)


def time_embed(shards: list[str], settings, reference=None) -> tuple[dict, np.ndarray]:
    """Images/s of `embed`; with `reference` (the fp32 torch embeddings), the worst and mean cosine to it."""
    import numpy as np

    from dedup.io.store import EmbeddingStore
    from dedup.stages.embed import cached_embedder, embed

    started = time.perf_counter()
    cached_embedder(settings)
    load_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = embed(shards, out, settings)
        seconds = time.perf_counter() - started
        vectors = np.array(EmbeddingStore(out).load().embeddings)
    row = {
        "images": result["embedded"],
        "seconds": round(seconds, 2),
        "images_per_s": round(result["embedded"] / seconds, 1),
        "model_load_seconds": round(load_seconds, 2),
    }
    if reference is not None:
        cosine = (vectors * reference).sum(axis=1)
        row.update(cosine_to_fp32_min=round(float(cosine.min()), 5), cosine_to_fp32_mean=round(float(cosine.mean()), 5))
    return row, vectors


def main() -> None:
    from dedup.settings import EmbedSettings

    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=["pixels", "clip", "model"])
    parser.add_argument("--runtimes", nargs="*", default=["onnx", "onnx-int8"], help="clip runtimes timed beside torch")
    args = parser.parse_args()
    shards = [str(FLICKR / f"flickr8k-224-{i:05d}.tar") for i in range(args.shards)]
    folder = Path(tempfile.mkdtemp())
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}"
    }
    if "pixels" in args.only:
        results["pixels (8x8), 2 processes"] = time_embed(
            shards, EmbedSettings(embedder="pixels", pixel_size=8, workers=2)
        )[0]
        results["pixels (8x8), 1 process"] = time_embed(
            shards, EmbedSettings(embedder="pixels", pixel_size=8, workers=1)
        )[0]
    if "clip" in args.only:
        checkpoint = clip_checkpoint(folder, "ViT-B-32")
        results["clip ViT-B-32 fp32, torch"], reference = time_embed(
            shards, EmbedSettings(embedder="clip", model="ViT-B-32", pretrained=checkpoint)
        )
        for runtime in args.runtimes:
            try:
                results[f"clip ViT-B-32, runtime {runtime}"] = time_embed(
                    shards,
                    EmbedSettings(embedder="clip", model="ViT-B-32", pretrained=checkpoint, runtime=runtime),
                    reference,
                )[0]
            except Exception as error:  # noqa: BLE001 - a refused runtime is a result too
                results[f"clip ViT-B-32, runtime {runtime}"] = {"refused": str(error)}
    if "model" in args.only:
        results["model: TorchScript ResNet-50 (SSCD backbone)"] = time_embed(
            shards, EmbedSettings(embedder="model", model_path=resnet50_torchscript(folder))
        )[0]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
