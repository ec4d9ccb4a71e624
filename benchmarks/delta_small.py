"""The black-box attack's delta at small resolutions: tiled l2 (grid 4) of Flickr8k photos against their own
light edits and against their nearest unrelated photo, at the side a verify model generates.

    .venv/bin/python benchmarks/delta_small.py --side 16 --photos 2000
    .venv/bin/python benchmarks/delta_small.py --side 32 --photos 2000

Prints, per candidate delta, the share of true copies within it and the share of photos whose nearest
unrelated photo is within it (each a false extraction, were that photo generated). docs/verify.md has the numbers.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from dedup.attack.distances import pairwise_tiled_l2, tiled_l2
from dedup.tools.planting import transform_image

ROOT = Path(__file__).resolve().parents[1]
FLICKR = ROOT.parent / "shared" / "data" / "flickr8k"
EDITS = ("reencode", "resize", "crop", "colour", "overlay")


def photos(count: int) -> list[bytes]:
    found: list[bytes] = []
    for shard in sorted(FLICKR.glob("flickr8k-224-*.tar")):
        with tarfile.open(shard) as archive:
            found += [archive.extractfile(m).read() for m in archive if m.name.endswith(".jpg")]  # type: ignore[union-attr]
        if len(found) >= count:
            return found[:count]
    return found


def small(data: bytes, side: int) -> np.ndarray:
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    return np.asarray(image, np.float64) / 255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=16)
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    originals = photos(args.photos)
    images = np.stack([small(data, args.side) for data in originals])
    copies = {edit: [] for edit in EDITS}
    for index, data in enumerate(originals[:500]):
        for edit in EDITS:
            copies[edit].append(float(tiled_l2(images[index], small(transform_image(data, edit, rng), args.side))))
    distances = pairwise_tiled_l2(images)
    np.fill_diagonal(distances, np.inf)
    nearest_unrelated = distances.min(1)
    rows = []
    for delta in (0.05, 0.075, 0.1, 0.125, 0.15, 0.2):
        rows.append(
            {
                "delta": delta,
                "copies_within": {edit: round(float(np.mean(np.array(d) <= delta)), 3) for edit, d in copies.items()},
                "photos_with_an_unrelated_photo_within": round(float(np.mean(nearest_unrelated <= delta)), 4),
            }
        )
    print(json.dumps({"side": args.side, "photos": len(originals), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
