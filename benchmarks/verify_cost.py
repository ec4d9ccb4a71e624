"""What verification costs, part by part: ORB keypoints of an image (with and without its mirror image's), and
matching one pair (Lowe's ratio test and RANSAC), on real Flickr8k photos at the size `find` reads them.

find.json records how many images and pairs each part ran on (`verification`: checked, mirror_images,
mirror_checked), so a run's verification time follows from these unit costs. Each part is timed in turns
(plain, mirrored, plain, ...) so that whatever else runs on the machine weighs on both alike:

    .venv/bin/python benchmarks/verify_cost.py --photos 300 --rounds 3
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import time
from pathlib import Path

from PIL import Image

from dedup.search import local_features

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"


def photos(count: int, shard: int) -> list[Image.Image]:
    with tarfile.open(FLICKR / f"flickr8k-224-{shard:05d}.tar") as archive:
        members = [m for m in archive if m.name.endswith(".jpg")][:count]
        return [Image.open(io.BytesIO(archive.extractfile(m).read())).convert("RGB") for m in members]  # type: ignore[union-attr]


def milliseconds(work, items) -> float:
    started = time.perf_counter()
    for item in items:
        work(item)
    return 1000 * (time.perf_counter() - started) / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shard", type=int, default=7)
    args = parser.parse_args()
    images = photos(args.photos, args.shard)
    features = [local_features.features(image) for image in images]
    pairs = list(zip(features, features[1:] + features[:1]))  # unrelated photos: what most checked pairs are
    timings: dict[str, list[float]] = {"keypoints": [], "keypoints_with_mirror": [], "match_pair": []}
    for _ in range(args.rounds):
        timings["keypoints"].append(milliseconds(local_features.features, images))
        timings["keypoints_with_mirror"].append(
            milliseconds(lambda image: local_features.features(image, mirrored=True), images)
        )
        timings["match_pair"].append(milliseconds(lambda pair: local_features.inliers(*pair), pairs))
    print(
        json.dumps(
            {
                "photos": len(images),
                "rounds": args.rounds,
                **{f"{name}_ms": round(min(values), 3) for name, values in timings.items()},
                "all_ms": {name: [round(v, 3) for v in values] for name, values in timings.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
