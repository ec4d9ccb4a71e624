"""The CUDA paths in one short run, for a machine with a GPU (CI never has one; run it where a device is lent).

    python benchmarks/gpu_check.py --out /tmp/gpu            # checks 1-3: a few minutes
    python benchmarks/gpu_check.py --out /tmp/gpu --full     # then cifar-full and flickr-full on the GPU
    python benchmarks/gpu_check.py --out /tmp/cpu --device cpu --steps 5   # the mechanics on CPU (dry run)
    python benchmarks/gpu_check.py --write-subset .gpudata   # the Flickr8k samples the checks read, small enough to
                                                             # carry to a device machine (../shared does not travel);
                                                             # there: --flickr .gpudata

1. CLIP image embedding, fp16 on the device against fp32 on CPU (ViT-B-32, random weights saved here):
   the lowest cosine over 64 Flickr8k photos (must stay >= 0.99), and the model's images/s in fp16 on the device.
2. `verify` with a small caption preset: the diffusion models train, sample and score on the device.
3. `extract` on a tiny Stable Diffusion pipeline saved locally, loaded in fp16 on the device.
4. `dedup embed` end to end on the device (decode, fp16 CLIP, hashes, store): images/s.
Each step's seconds and results go to OUT/gpu_check.json.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
FLICKR = ROOT.parent / "shared" / "data" / "flickr8k"
SUBSET_SAMPLES = {"flickr8k-224-00000.tar": 64, "flickr8k-224-00001.tar": 600, "flickr8k-224-00008.tar": 91}
sys.path.insert(0, str(ROOT / "tests"))

SMALL_CAPTION_PRESET = """
[plant]
source = "{flickr}/flickr8k-224-00001.tar"
unique = 500
sources = 5
copies = 50
shard_size = 500
[holdout]
shards = "{flickr}/flickr8k-224-00008.tar"
count = 91
[model]
captions = true
resolution = 16
train_steps = {steps}
batch_size = 64
sample_steps = 25
device = "{device}"
[attack]
prompts = 5
control_prompts = 5
generations_per_prompt = 16
min_clique = 5
unique_sample = 91
"""


def write_subset(folder: Path) -> None:
    """The first samples of the three shards the checks read, as shards of the same names."""
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    for name, samples in SUBSET_SAMPLES.items():
        with tarfile.open(FLICKR / name) as source, tarfile.open(folder / name, "w") as target:
            keys: set[str] = set()
            for member in source:
                key = member.name.split(".", 1)[0]
                if key not in keys and len(keys) == samples:
                    break
                keys.add(key)
                target.addfile(member, source.extractfile(member))


def model_images_per_second(embedder, prepared: list, batch: int = 256, rounds: int = 5) -> float:
    batch_of = (prepared * (batch // len(prepared) + 1))[:batch]
    embedder.embed(batch_of)  # warm-up: cuDNN autotuning, allocator
    started = time.perf_counter()
    for _ in range(rounds):
        embedder.embed(batch_of)
    return batch * rounds / (time.perf_counter() - started)


def check_clip(device: str, folder: Path) -> dict:
    import open_clip
    from PIL import Image

    from dedup.embedders.clip import ClipEmbedder
    from dedup.io.reader import iter_shard

    checkpoint = folder / "ViT-B-32-random.pt"
    torch.save(open_clip.create_model("ViT-B-32").state_dict(), checkpoint)
    images = []
    for sample in iter_shard(str(FLICKR / "flickr8k-224-00000.tar"), on_fault=lambda fault: None):
        images.append(Image.open(io.BytesIO(sample.files["jpg"])).convert("RGB"))
        if len(images) == 64:
            break
    reference = ClipEmbedder("ViT-B-32", str(checkpoint), device="cpu", precision="fp32")
    fast = ClipEmbedder("ViT-B-32", str(checkpoint), device=device, precision="fp16" if device == "cuda" else "fp32")
    expected = reference.embed([reference.prepare(image) for image in images])
    prepared = [fast.prepare(image) for image in images]
    got = fast.embed(prepared)
    cosine = (expected * got).sum(1) / np.linalg.norm(expected, axis=1) / np.linalg.norm(got, axis=1)
    return {
        "device": device,
        "precision": fast.precision,
        "lowest_cosine": round(float(cosine.min()), 5),
        "model_images_per_second_batch_256": round(model_images_per_second(fast, prepared), 1),
    }


def check_embed(device: str, out: Path) -> dict:
    checkpoint = out / "ViT-B-32-random.pt"
    shard = FLICKR / "flickr8k-224-00001.tar"
    started = time.perf_counter()
    dedup(
        "--quiet",
        "embed",
        shard,
        "--run-dir",
        out / "embed-run",
        "--model",
        "ViT-B-32",
        "--pretrained",
        checkpoint,
        "--device",
        device,
        "--batch-size",
        128,
        "--decode-threads",
        8,
    )
    seconds = time.perf_counter() - started
    rows = sum(len(np.load(f, mmap_mode="r")) for f in (out / "embed-run" / "embeddings" / "img_emb").glob("*.npy"))
    return {"images": rows, "seconds_with_start_up": round(seconds, 1), "images_per_second": round(rows / seconds, 1)}


def dedup(*args) -> None:
    subprocess.run([sys.executable, "-m", "dedup.cli", *map(str, args)], check=True, cwd=ROOT)


def check_verify(device: str, out: Path, steps: int) -> dict:
    preset = out / "verify-small-caption.toml"
    preset.write_text(SMALL_CAPTION_PRESET.format(flickr=FLICKR, device=device, steps=steps))
    started = time.perf_counter()
    dedup("--quiet", "verify", out / "verify-small", "--preset", preset)
    report = json.loads((out / "verify-small" / "verify.json").read_text())
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "device": report["settings"]["model"]["device"],
        **{
            name: {
                k: report[name][k]
                for k in ("membership_auc_duplicated_vs_heldout", "flagged_prompts", "extracted_images")
            }
            for name in ("A", "B")
        },
    }


def check_extract(device: str, out: Path) -> dict:
    from test_attack import tiny_stable_diffusion

    from dedup.attack.text_to_image import ExtractSettings, extract, load_pipeline
    from dedup.settings import load_settings

    folder = tiny_stable_diffusion(out / "tiny-sd")
    pipe = load_pipeline(folder, device)
    started = time.perf_counter()
    report = extract(
        out / "verify-small",
        folder,
        ExtractSettings(prompts=5, generations_per_prompt=8, steps=10, size=32, min_clique=4, prefilter=3),
        load_settings("offline").embed,
        pipe=pipe,
    )
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "dtype": str(pipe.unet.dtype),
        "prompts": report["prompts"],
        "detector_scores": [p["detector_score"] for p in report["per_prompt"]],
    }


def main() -> None:
    global FLICKR
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="gpu-check-")))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--full", action="store_true", help="Also run the cifar-full and flickr-full verify presets.")
    parser.add_argument(
        "--steps", type=int, default=300, help="Training steps of the small verify (5 for a CPU dry run)."
    )
    parser.add_argument(
        "--flickr", type=Path, default=FLICKR, help="Folder of the Flickr8k shards (or of --write-subset's)."
    )
    parser.add_argument(
        "--write-subset", type=Path, metavar="FOLDER", help="Write the samples the checks read to FOLDER; stop."
    )
    args = parser.parse_args()
    if args.write_subset:
        write_subset(args.write_subset)
        return
    FLICKR = args.flickr.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu", "torch": torch.__version__}
    for name, check in (
        ("clip_fp16", lambda: check_clip(args.device, args.out)),
        ("verify_small_caption", lambda: check_verify(args.device, args.out, args.steps)),
        ("extract_tiny_sd", lambda: check_extract(args.device, args.out)),
        ("embed_end_to_end", lambda: check_embed(args.device, args.out)),
    ):
        try:
            results[name] = check()
        except Exception as error:  # one failing path must not hide the others' results
            results[name] = {"error": f"{type(error).__name__}: {error}"}
        print(name, json.dumps(results[name]), flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2))
    if args.full:
        for preset in ("cifar-full", "flickr-full"):
            started = time.perf_counter()
            dedup("--quiet", "verify", args.out / preset, "--preset", preset)
            report = json.loads((args.out / preset / "verify.json").read_text())
            results[preset] = {
                "seconds": round(time.perf_counter() - started, 1),
                **{name: {k: v for k, v in report[name].items() if k != "per_prompt"} for name in ("A", "B")},
            }
            print(
                preset,
                json.dumps(results[preset]["A"]["extracted_images"]),
                json.dumps(results[preset]["B"]["extracted_images"]),
                flush=True,
            )
            (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
