"""The default on a folder of large JPEG photos, as web corpora hold them (LAION's are often 500-1,500 px): how fast,
and whether planted copies are still found and nothing else merged (issue 31, speed).

The shared data has no photo above 224 px, so the folder is made: Flickr8k photos of shards 6-7 (never used to
choose a threshold) enlarged to a long side drawn from 640-1,440 px (Lanczos, JPEG quality 90), and for a third of
them one copy each: re-encoded at quality 60-75, resized to 50-80 %, cropped by 4-10 % a side, or mirrored. The seed
and the edits were fixed before anything was measured.

    .venv/bin/python benchmarks/large_photos.py --work /tmp/large [--set embed.decode_size=off]
    .venv/bin/python benchmarks/large_photos.py --work /tmp/photos320 --long-side 320    # photos of 320 px

Prints the seconds, images/s, and the planted pairs' recall and pair precision, and writes them with the false
pairs to WORK/NAME.json.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FLICKR = ROOT.parent / "shared" / "data" / "flickr8k"
SHARDS = ("flickr8k-224-00006.tar", "flickr8k-224-00007.tar")
PHOTOS = 1200
SEED = 2108
EDITS = ("re-encode", "resize", "crop", "mirror")


def _photos() -> list[tuple[str, bytes]]:
    found = []
    for name in SHARDS:
        with tarfile.open(FLICKR / name) as archive:
            found += [(m.name[:-4], archive.extractfile(m).read()) for m in archive if m.name.endswith(".jpg")]
    return found[:PHOTOS]


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _edited(image: Image.Image, edit: str, rng: np.random.Generator) -> Image.Image:
    if edit == "resize":
        scale = rng.uniform(0.5, 0.8)
        return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    if edit == "crop":
        left, top, right, bottom = (rng.uniform(0.04, 0.10) for _ in range(4))
        w, h = image.size
        return image.crop((round(w * left), round(h * top), round(w * (1 - right)), round(h * (1 - bottom))))
    if edit == "mirror":
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def make_folder(folder: Path, long_side: int | None = None) -> list[tuple[str, str, str]]:
    """The folder of large photos and their copies; returns (photo key, copy key, edit) of each planted pair.
    `long_side`: every photo this long instead of a drawn length (the same draws are made, so the same copies)."""
    rng = np.random.default_rng(SEED)
    folder.mkdir(parents=True, exist_ok=True)
    planted = []
    for key, data in _photos():
        photo = Image.open(io.BytesIO(data)).convert("RGB")
        side = int(rng.integers(640, 1441))
        side = long_side or side
        scale = side / max(photo.size)
        large = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.Resampling.LANCZOS)
        (folder / f"{key}.jpg").write_bytes(_jpeg(large, 90))
        if rng.random() < 1 / 3:
            edit = EDITS[int(rng.integers(len(EDITS)))]
            quality = int(rng.integers(60, 76)) if edit == "re-encode" else 90
            (folder / f"{key}-copy.jpg").write_bytes(_jpeg(_edited(large, edit, rng), quality))
            planted.append((key, f"{key}-copy", edit))
    return planted


def score(run_dir: Path, planted: list[tuple[str, str, str]]) -> dict:
    rows = pq.read_table(run_dir / "groups.parquet", columns=["key", "group_id"]).to_pylist()
    group = {row["key"]: row["group_id"] for row in rows}
    members: dict[int, list[str]] = {}
    for key, group_id in group.items():
        members.setdefault(group_id, []).append(key)
    true_pairs = {frozenset((a, b)) for a, b, _ in planted}
    found_pairs = {frozenset(pair) for keys in members.values() for pair in combinations(keys, 2)}
    by_edit = {
        edit: round(
            sum(
                group.get(a) is not None and group.get(a) == group.get(b) and group[a] >= 0
                for a, b, e in planted
                if e == edit
            )
            / max(1, sum(e == edit for _, _, e in planted)),
            4,
        )
        for edit in EDITS
    }
    right = len(found_pairs & true_pairs)
    return {
        "planted_pairs": len(true_pairs),
        "found_pairs": len(found_pairs),
        "recall": round(right / len(true_pairs), 4),
        "precision": round(right / max(1, len(found_pairs)), 4),
        "recall_by_edit": by_edit,
        "false_pairs": sorted(sorted(pair) for pair in found_pairs - true_pairs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--name", default="run")
    parser.add_argument(
        "--set", action="append", default=[], help="a setting for dedup run, e.g. embed.decode_size=off"
    )
    parser.add_argument("--long-side", type=int, help="every photo this long (e.g. 320) instead of 640-1,440 px")
    args = parser.parse_args()
    folder = args.work / "photos"
    planted_file = args.work / "planted.json"
    if not planted_file.exists():
        planted_file.write_text(json.dumps(make_folder(folder, args.long_side)))
    planted = [tuple(row) for row in json.loads(planted_file.read_text())]
    run_dir = args.work / args.name
    settings = [part for value in args.set for part in ("--set", value)]
    command = [sys.executable, "-m", "dedup.cli", "-q", "run", str(folder), "--run-dir", str(run_dir), *settings]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    images = len(list(folder.glob("*.jpg")))
    find = json.loads((run_dir / "find.json").read_text())
    result = {
        "images": images,
        "megapixels": round(sum(Image.open(p).size[0] * Image.open(p).size[1] for p in folder.glob("*.jpg")) / 1e6, 1),
        "settings": args.set,
        "seconds": round(seconds, 1),
        "images_per_second": round(images / seconds, 1),
        "find_seconds": find["seconds"],
        "verification_seconds": find.get("verification", {}).get("seconds"),
        **score(run_dir, planted),
    }
    (args.work / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: value for key, value in result.items() if key != "false_pairs"}, indent=2))
    print(f"written: {args.work / args.name}.json (with the false pairs)")


if __name__ == "__main__":
    main()
