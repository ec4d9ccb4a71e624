"""Small JPEG thumbnails of chosen samples, read by streaming each needed shard once."""

from __future__ import annotations

import base64
import io

from PIL import Image

from dedup.io.imaging import UnreadableImage, open_image
from dedup.io.reader import iter_selected


def thumbnail_uri(image: Image.Image, size: int = 128) -> str:
    image = image.copy()
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def fetch_thumbnails(wanted: list[tuple[str, int]], size: int = 128) -> dict[tuple[str, int], str]:
    """(shard, sample_index) -> data URI. A shard is read only up to the last sample wanted from it."""
    found: dict[tuple[str, int], str] = {}
    for sample in iter_selected(wanted):
        try:
            found[(sample.shard, sample.index)] = thumbnail_uri(open_image(sample.files)[0], size)
        except UnreadableImage:
            pass
    return found
