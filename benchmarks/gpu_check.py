"""The CUDA paths in one short run, for a machine with a GPU (CI never has one; run it where a device is lent).

    python benchmarks/gpu_check.py --out /tmp/gpu            # checks 1-4: a few minutes
    python benchmarks/gpu_check.py --out /tmp/gpu --full     # then the full preset sized for one GPU
                                                             # (configs/verify-flickr-near-gpu.toml)
    python benchmarks/gpu_check.py --out /tmp/cpu --device cpu --steps 5   # the mechanics on CPU (dry run)
    python benchmarks/gpu_check.py --write-subset .gpudata [--full]   # the Flickr8k samples the checks read, to
                                                             # carry to a device machine (../shared does not travel;
                                                             # 14 MB, or 54 MB with the full preset's shards);
                                                             # there: --shared .gpudata

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
SHARED = ROOT.parent / "shared" / "data"
FLICKR = SHARED / "flickr8k"
SUBSET_SAMPLES = {"flickr8k-224-00000.tar": 64, "flickr8k-224-00001.tar": 600, "flickr8k-224-00008.tar": 91}
FULL_PRESET = "flickr-near-gpu"
FULL_SHARDS = ("flickr8k-224-00000.tar", "flickr8k-224-00001.tar", "flickr8k-224-00007.tar")  # read whole
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


def write_subset(folder: Path, full: bool) -> None:
    """FOLDER/flickr8k/: the first samples of the three shards the checks read, as shards of the same names; with
    `full`, the shards the full preset reads, whole."""
    import shutil
    import tarfile

    folder = folder / "flickr8k"
    folder.mkdir(parents=True, exist_ok=True)
    for name in FULL_SHARDS if full else ():
        shutil.copyfile(FLICKR / name, folder / name)
    for name, samples in SUBSET_SAMPLES.items():
        if full and name in FULL_SHARDS:
            continue
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


def run_full_preset(device: str, out: Path, shared: Path) -> dict:
    """The full preset sized for one GPU (configs/verify-flickr-near-gpu.toml), reading the Flickr8k shards
    under `shared`."""
    import os

    started = time.perf_counter()
    os.environ["DEDUP_SHARED_DATA"] = str(shared)
    dedup("--quiet", "verify", out / FULL_PRESET, "--preset", FULL_PRESET, "--set", f"model.device={device}")
    report = json.loads((out / FULL_PRESET / "verify.json").read_text())
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "training_images": report["training_images"],
        "models": {
            name: {k: v for k, v in report[name].items() if k != "per_prompt"} for name in report["training_images"]
        },
    }


def main() -> None:
    global FLICKR
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="gpu-check-")))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--full", action="store_true", help=f"Also run the verify preset {FULL_PRESET}.")
    parser.add_argument(
        "--steps", type=int, default=300, help="Training steps of the small verify (5 for a CPU dry run)."
    )
    parser.add_argument(
        "--shared", type=Path, default=SHARED, help="Folder holding flickr8k/ (../shared/data, or --write-subset's)."
    )
    parser.add_argument(
        "--write-subset", type=Path, metavar="FOLDER", help="Write the samples the checks read to FOLDER; stop."
    )
    args = parser.parse_args()
    if args.write_subset:
        write_subset(args.write_subset, args.full)
        return
    FLICKR = args.shared.resolve() / "flickr8k"
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
        results[FULL_PRESET] = run_full_preset(args.device, args.out, args.shared.resolve())
        models = results[FULL_PRESET]["models"]
        extracted = {name: measured["extracted_images"] for name, measured in models.items()}
        print(FULL_PRESET, json.dumps(extracted), flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
