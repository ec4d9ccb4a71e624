"""Copy-detection quality of `dedup run` on the UKBench protocol, built from Flickr8k photos (issue 16).

Each source photo comes with five edited copies, as in the UKBench protocol Immaculate reports on: a crop, a
horizontal flip, a vertical flip, a 25 degree rotation and a resize to a square; unrelated Flickr8k photos
are mixed in as distractors. `dedup run` runs on the shards as a user would, and the groups it returns are
scored as pairs: every pair of samples within a returned group is a predicted pair, every pair within a
source's group of six a true pair (so a copy found through another copy counts, as connected components
make it). Per edit: the share of its copies grouped with their source. Also the wall time and the peak
memory of the run and its workers.

Two splits, fixed before anything was measured: `dev` (seed 1, sources and distractors from shards 0-4) is
where detectors and thresholds may be tuned; `heldout` (seed 2, shards 5-8, other photos) is never tuned on
and is reported apart.

    .venv/bin/python benchmarks/quality.py --work /tmp/quality --split dev --config offline
    .venv/bin/python benchmarks/quality.py --work /tmp/quality --split heldout --config offline \\
        --set find.threshold=off --set find.corroborate_threshold=off    # the perceptual hash alone
"""

from __future__ import annotations

import argparse
import io
import json
import random
import resource
import shutil
import subprocess
import sys
import tarfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FLICKR = ROOT.parent / "shared" / "data" / "flickr8k"
SPLITS = {"dev": (1, range(0, 5)), "heldout": (2, range(5, 9))}
EDITS = ("crop", "hflip", "vflip", "rotate25", "square")


def read_photos(shards: range) -> list[tuple[str, bytes]]:
    photos = []
    for number in shards:
        with tarfile.open(FLICKR / f"flickr8k-224-{number:05d}.tar") as archive:
            for member in archive:
                if member.name.endswith(".jpg"):
                    handle = archive.extractfile(member)
                    assert handle is not None
                    photos.append((member.name[: -len(".jpg")], handle.read()))
    return photos


def edit(data: bytes, kind: str, rng: random.Random) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    if kind == "crop":  # keep 60-80 % of each side, anywhere in the photo
        w, h = round(width * rng.uniform(0.6, 0.8)), round(height * rng.uniform(0.6, 0.8))
        left, top = rng.randint(0, width - w), rng.randint(0, height - h)
        image = image.crop((left, top, left + w, top + h))
    elif kind == "hflip":
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    elif kind == "vflip":
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    elif kind == "rotate25":
        image = image.rotate(25 * rng.choice((-1, 1)), resample=Image.Resampling.BICUBIC, expand=True)
    elif kind == "square":  # the photo squeezed or stretched to a square of another size
        side = rng.choice((128, 160, 192, 256))
        image = image.resize((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def build(out: Path, split: str, sources: int, distractors: int) -> dict:
    """Shards of sources, their five copies and distractors, shuffled; the ground truth as JSON."""
    seed, shards = SPLITS[split]
    rng = random.Random(seed)
    photos = read_photos(shards)
    chosen = rng.sample(photos, sources + distractors)
    samples, truth = [], {}
    for key, data in chosen[:sources]:
        samples.append((key, data))
        truth[key] = {"group": key, "edit": "source"}
        for kind in EDITS:
            samples.append((f"{key}-{kind}", edit(data, kind, rng)))
            truth[f"{key}-{kind}"] = {"group": key, "edit": kind}
    for key, data in chosen[sources:]:
        samples.append((key, data))
        truth[key] = {"group": key, "edit": "distractor"}
    rng.shuffle(samples)
    out.mkdir(parents=True, exist_ok=True)
    per_shard = 2_000
    for number, start in enumerate(range(0, len(samples), per_shard)):
        with tarfile.open(out / f"ukbench-{number:05d}.tar", "w") as archive:
            for key, data in samples[start : start + per_shard]:
                info = tarfile.TarInfo(f"{key}.jpg")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    (out / "truth.json").write_text(json.dumps(truth))
    return truth


def pairs(count: int) -> int:
    return count * (count - 1) // 2


def score(groups_path: Path, truth: dict) -> dict:
    groups = pq.read_table(groups_path, columns=["key", "group_id"]).to_pylist()
    predicted_of = {row["key"]: row["group_id"] for row in groups}
    members: dict[int, Counter] = defaultdict(Counter)
    for key, found in predicted_of.items():
        members[found][truth[key]["group"]] += 1
    true_pairs = sum(pairs(n) for n in Counter(t["group"] for t in truth.values()).values())
    predicted_pairs = sum(pairs(sum(c.values())) for c in members.values())
    correct = sum(pairs(n) for c in members.values() for n in c.values())
    found_with_source: Counter = Counter()
    copies: Counter = Counter()
    for key, about in truth.items():
        if about["edit"] in EDITS:
            copies[about["edit"]] += 1
            found_with_source[about["edit"]] += predicted_of[key] == predicted_of[about["group"]]
    return {
        "samples": len(truth),
        "true_pairs": true_pairs,
        "predicted_pairs": predicted_pairs,
        "correct_pairs": correct,
        "precision": round(correct / predicted_pairs, 4) if predicted_pairs else None,
        "recall": round(correct / true_pairs, 4),
        "recall_by_edit": {kind: round(found_with_source[kind] / copies[kind], 4) for kind in EDITS},
    }


def run_dedup(shards: Path, run_dir: Path, config: str, overrides: list[str]) -> dict:
    command = [
        sys.executable,
        "-m",
        "dedup.cli",
        "--quiet",
        "run",
        str(shards),
        "--config",
        config,
        "--run-dir",
        str(run_dir),
    ]
    for override in overrides:
        command += ["--set", override]
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode != 0:
        raise SystemExit(finished.stderr)
    # the largest resident set of the run and of its worker processes (the only children this process had)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"seconds": round(time.perf_counter() - started, 1), "peak_rss_mib": round(peak_kib / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--split", choices=sorted(SPLITS), required=True)
    parser.add_argument("--sources", type=int, default=1_000, help="Photos with five copies each.")
    parser.add_argument("--distractors", type=int, default=2_000, help="Unrelated photos mixed in.")
    parser.add_argument("--config", default="offline")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--name", help="Run folder name (default: from the config and overrides).")
    args = parser.parse_args()

    data = args.work / f"{args.split}-{args.sources}-{args.distractors}"
    truth = (
        json.loads((data / "truth.json").read_text())
        if (data / "truth.json").exists()
        else build(data, args.split, args.sources, args.distractors)
    )
    name = args.name or "-".join([args.config, *args.overrides]).replace("/", "_").replace("=", "_")
    run_dir = args.work / "runs" / f"{args.split}-{name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cost = run_dedup(data, run_dir, args.config, args.overrides)
    result = {
        "split": args.split,
        "config": args.config,
        "overrides": args.overrides,
        **score(run_dir / "groups.parquet", truth),
        **cost,
        "images_per_second": round(len(truth) / cost["seconds"], 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
