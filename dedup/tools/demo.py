"""Demo shards built from real photographs that ship inside scikit-image, with planted copies.

A fresh machine has no data set; scikit-image (a dependency) carries a handful of real photos. We write
them as a LAION-style shard set (jpg + txt + json), then plant re-encoded, resized, cropped and exact copies
across the shards, so the first `dedup run` finds real groups. (scikit-image's 25x25 LFW crops are left
out: blurred up, they are too alike for an 8x8 thumbnail to tell apart.)
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from dedup.errors import require_extra
from dedup.io.atomic import atomic_open
from dedup.tools.planting import PlantedSet, plant

PHOTOS = {
    "astronaut": "the astronaut Eileen Collins in her flight suit",
    "chelsea": "Chelsea the cat looking up",
    "coffee": "a cup of coffee on a saucer",
    "rocket": "a rocket on its launch pad",
    "motorcycle_left": "a motorcycle parked indoors",
    "camera": "a man with a camera on a tripod",
    "moon": "the surface of the moon",
    "coins": "old coins on a dark background",
    "brick": "a brick wall",
    "grass": "a patch of grass",
    "gravel": "gravel on the ground",
    "hubble_deep_field": "galaxies in the Hubble deep field",
    "immunohistochemistry": "a stained tissue sample under a microscope",
    "retina": "a photograph of a human retina",
    "page": "a scanned page of text",
    "cell": "a cell under a microscope",
}


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _photos() -> list[tuple[str, Image.Image, str]]:
    require_extra("skimage", "demo", "dedup demo")
    from skimage import data

    found = []
    for name, caption in PHOTOS.items():
        loader = getattr(data, name, None)
        if loader is None:
            continue
        pixels = loader()
        if isinstance(pixels, tuple):
            pixels = pixels[0]
        image = Image.fromarray(np.asarray(pixels)).convert("RGB")
        image.thumbnail((256, 256))
        found.append((name, image, caption))
    return found


def build_demo(out_dir: str | Path = "demo-data", shards: int = 3, seed: int = 0) -> PlantedSet:
    """Write OUT/source (the real images) and OUT/shards (with planted copies and planted.json)."""
    out_dir = Path(out_dir)
    samples = _photos()
    random.Random(seed).shuffle(samples)  # photos spread over every shard, as in a scraped set
    per_shard = -(-len(samples) // shards)
    for number in range(shards):
        with atomic_open(out_dir / "source" / f"demo-{number:05d}.tar", "wb") as handle:
            writer = wds.TarWriter(handle, encoder=False, mtime=0)
            for name, image, caption in samples[number * per_shard : (number + 1) * per_shard]:
                key = f"{number:05d}_{name}"
                meta = {
                    "key": key,
                    "caption": caption,
                    "width": image.width,
                    "height": image.height,
                    "source": f"skimage.data.{name}",
                }
                writer.write(
                    {"__key__": key, "jpg": _jpeg(image), "txt": caption.encode(), "json": json.dumps(meta).encode()}
                )
            writer.close()
    photo_names = {name for name in PHOTOS}
    return plant(
        str(out_dir / "source"),
        out_dir / "shards",
        sources=10,
        copies=(1, 4),
        seed=seed,
        prefix="demo",
        eligible=lambda sample: sample.key.split("_", 1)[1] in photo_names,
    )
