"""The aligned overlay `dedup review` shows for a pair (dedup/review/overlay.py), on Flickr8k photos: an edited copy
lines up and its difference is dark; two shots of one scene (labelled by eye, benchmarks/labels) light up where the
subject moved; two unrelated photos do not align at all."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
from conftest import FLICKR, ROOT
from PIL import Image, ImageDraw

from dedup.review.overlay import GAP, aligned_pair


def _photo(shard: str, key: str) -> Image.Image:
    with tarfile.open(FLICKR / shard) as archive:
        return Image.open(io.BytesIO(archive.extractfile(f"{key}.jpg").read())).convert("RGB")


def _difference(picture: Image.Image) -> np.ndarray:
    """The right panel, gray."""
    width = (picture.width - GAP) // 2
    return np.asarray(picture.crop((width + GAP, 0, picture.width, picture.height)).convert("L"), np.float32)


def test_a_copy_lines_up_dark_and_a_second_shot_of_the_scene_does_not(shared):
    labelled = json.loads((ROOT / "benchmarks/labels/flickr8k-relations.json").read_text())["pairs"]
    scenes = [pair for pair in labelled if pair[4] == "same_scene"][:3]
    for shard_a, key_a, shard_b, key_b, _ in scenes:
        photo = _photo(shard_a, key_a)
        copy = photo.crop((12, 8, photo.width - 20, photo.height - 10)).resize((300, 230))
        copy = copy.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        ImageDraw.Draw(copy).text((10, 10), "WHEN YOU LOL", fill=(255, 255, 255))
        of_copy = aligned_pair(photo, copy)
        of_scene = aligned_pair(photo, _photo(shard_b, key_b))
        assert of_copy is not None and of_scene is not None, (key_a, key_b)
        copy_moved, scene_moved = _difference(of_copy).mean(), _difference(of_scene).mean()
        assert copy_moved < 12 and scene_moved > 2 * copy_moved, (key_a, key_b, copy_moved, scene_moved)
    unrelated = [pair for pair in labelled if pair[4] == "distinct"]
    assert aligned_pair(_photo(*scenes[0][:2]), _photo(*unrelated[0][2:4])) is None
