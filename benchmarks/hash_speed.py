"""Images per second, end to end, on one folder of JPEG files: `dedup run --config hashes` (content hash, pHash,
PDQ with its flips and turns, search, select, write) and imagededup's PHash (encode the folder, find duplicates
within Hamming distance 4), each in its own process, side by side. imagededup runs from its own virtual
environment (its pins are not the project's):

    python3 -m venv /tmp/venv-peers && /tmp/venv-peers/bin/pip install imagededup
    .venv/bin/python benchmarks/hash_speed.py --work /tmp/hash-speed --peer-python /tmp/venv-peers/bin/python \\
        [--config default]   # the default detector's rate on the same folder
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLICKR = ROOT.parent / "shared" / "data" / "flickr8k"

IMAGEDEDUP = """
import sys, time
from imagededup.methods import PHash
started = time.perf_counter()
hasher = PHash(verbose=False)
encodings = hasher.encode_images(image_dir=sys.argv[1])
duplicates = hasher.find_duplicates(encoding_map=encodings, max_distance_threshold=4)
print(time.perf_counter() - started, len(encodings), sum(1 for v in duplicates.values() if v))
"""


def image_folder(work: Path) -> Path:
    """Every Flickr8k photo as a JPEG file (8,091), extracted once."""
    folder = work / "images"
    if not folder.exists():
        partial = work / "images.partial"
        partial.mkdir(parents=True, exist_ok=True)
        for shard in sorted(FLICKR.glob("flickr8k-224-*.tar")):
            with tarfile.open(shard) as archive:
                for member in archive:
                    if member.name.endswith(".jpg"):
                        handle = archive.extractfile(member)
                        assert handle is not None
                        (partial / member.name).write_bytes(handle.read())
        partial.rename(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--peer-python", help="A Python with imagededup installed.")
    parser.add_argument("--config", default="hashes")
    args = parser.parse_args()
    folder = image_folder(args.work)
    images = sum(1 for _ in folder.glob("*.jpg"))
    run_dir = args.work / f"run-{args.config}"
    subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "dedup.cli", "--quiet", "run", str(folder), "--config", args.config,
         "--run-dir", str(run_dir)],
        check=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    summary = json.loads((run_dir / "summary.json").read_text())
    result = {
        "images": images,
        f"dedup_{args.config}": {"seconds": round(seconds, 1), "images_per_second": round(images / seconds, 1),
                                 "dropped": summary["dropped"]},
    }  # fmt: skip
    if args.peer_python:
        started = time.perf_counter()
        out = subprocess.run([args.peer_python, "-c", IMAGEDEDUP, str(folder)], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(out.stderr[-2000:])
        inner, encoded, with_duplicates = out.stdout.split()[-3:]
        seconds = time.perf_counter() - started
        result["imagededup_phash"] = {
            "seconds": round(seconds, 1),
            "images_per_second": round(images / seconds, 1),
            "seconds_inside": round(float(inner), 1),
            "encoded": int(encoded),
            "images_with_duplicates": int(with_duplicates),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
