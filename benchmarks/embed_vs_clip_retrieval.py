"""`dedup embed` against `clip-retrieval inference`, same shards, same model architecture, same machine, in
one run; and both against the machine's compute ceiling.

clip-retrieval pins old numpy, pyarrow, open-clip-torch and webdataset, so it lives in its own virtual
environment (`make clip-retrieval` makes .venv-clip-retrieval). Neither can download weights here: both
load the same randomly initialised ViT-B-32 checkpoint, saved by this script (clip-retrieval takes it as
`open_clip:ViT-B-32/<path>`); speed does not depend on the weight values.

Ceiling: the measured float32 matrix-product rate of this machine (numpy, 4096 x 512 x 4096) divided by
ViT-B-32's image-tower FLOPs per image (counted with torch.utils.flop_counter).

    .venv/bin/python benchmarks/embed_vs_clip_retrieval.py --shards 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FLICKR = ROOT.parent / "shared" / "data" / "flickr8k"
CLIP_RETRIEVAL = ROOT / ".venv-clip-retrieval" / "bin" / "clip-retrieval"
DEDUP = [sys.executable, "-m", "dedup.cli", "--quiet"]


def matmul_gflops() -> float:
    a = np.random.rand(4096, 512).astype(np.float32)
    b = np.random.rand(512, 4096).astype(np.float32)
    a @ b
    best = min(timed(lambda: a @ b) for _ in range(5))
    return 2 * 4096 * 512 * 4096 / best / 1e9


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def tower_gflops(model) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.encode_image(torch.zeros(1, 3, 224, 224))
    return counter.get_total_flops() / 1e9


def run(command: list[str], env: dict | None = None) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    import open_clip

    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnx"])
    args = parser.parse_args()
    if not CLIP_RETRIEVAL.exists():
        sys.exit(f"{CLIP_RETRIEVAL} is missing: run `make clip-retrieval` first")
    shards = [FLICKR / f"flickr8k-224-{i:05d}.tar" for i in range(args.shards)]
    images = sum(
        1 for shard in shards for name in __import__("tarfile").open(shard).getnames() if name.endswith(".jpg")
    )
    results: dict = {"images": images, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-32").eval()
        checkpoint = tmp / "vit-b-32-random.pt"
        torch.save(model.state_dict(), checkpoint)
        gflops = tower_gflops(model)
        rate = matmul_gflops()
        results["ceiling"] = {
            "matmul_gflops": round(rate, 1),
            "vit_b_32_gflops_per_image": round(gflops, 2),
            "images_per_s": round(rate / gflops, 1),
        }
        pattern = f"{FLICKR}/flickr8k-224-{{00000..{args.shards - 1:05d}}}.tar" if args.shards > 1 else str(shards[0])
        seconds = run(
            [
                str(CLIP_RETRIEVAL),
                "inference",
                "--input_dataset",
                pattern,
                "--input_format",
                "webdataset",
                "--output_folder",
                str(tmp / "clip-retrieval"),
                "--clip_model",
                f"open_clip:ViT-B-32/{checkpoint}",
                "--enable_text",
                "False",
                "--enable_metadata",
                "False",
                "--batch_size",
                str(args.batch_size),
                "--num_prepro_workers",
                str(min(2, args.shards)),  # it fails with more workers than shards
                "--enable_wandb",
                "False",
            ],
            env={"WANDB_MODE": "disabled"},
        )
        results["clip-retrieval inference"] = {"seconds": round(seconds, 1), "images_per_s": round(images / seconds, 1)}
        os.environ["DEDUP_CACHE"] = str(tmp / "cache")
        for runtime in args.runtimes:
            if runtime != "torch":  # the one-time export is not part of the per-image speed
                from dedup.embedders import build_embedder

                build_embedder("clip", model="ViT-B-32", pretrained=str(checkpoint), runtime=runtime)
            seconds = run(
                [
                    *DEDUP,
                    "embed",
                    *map(str, shards),
                    "--out",
                    str(tmp / f"dedup-{runtime}"),
                    "--embedder",
                    "clip",
                    "--model",
                    "ViT-B-32",
                    "--pretrained",
                    str(checkpoint),
                    "--batch-size",
                    str(args.batch_size),
                    "--set",
                    f"embed.runtime={runtime}",
                ]
            )
            results[f"dedup embed, runtime {runtime}"] = {
                "seconds": round(seconds, 1),
                "images_per_s": round(images / seconds, 1),
                "vs_clip_retrieval": round(results["clip-retrieval inference"]["seconds"] / seconds, 2),
            }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
