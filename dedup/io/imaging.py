"""Decode one sample's image and compute its cheap signals: content hash and 64-bit perceptual hash."""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image

from dedup.io import pdq

THUMB_SIDE = 16

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
DEFAULT_MAX_PIXELS = 64_000_000


class UnreadableImage(Exception):
    """The sample has no usable image; the message is the reason recorded in the manifest."""


@dataclass
class DecodedImage:
    image: Image.Image  # RGB
    extension: str
    sha256: str
    phash: int  # unsigned 64-bit
    width: int
    height: int
    pdq: np.ndarray  # uint8 (8, 32): PDQ's 256 bits of the image and of its seven flips and quarter turns
    thumb: np.ndarray  # uint8 (16, 16, 3): what the low-detail check compares (search/low_detail.py)


def find_image_field(files: dict[str, bytes]) -> str:
    lowered = {ext.lower(): ext for ext in files}
    for candidate in IMAGE_EXTENSIONS:
        if candidate in lowered:
            return lowered[candidate]
    raise UnreadableImage(
        f"no image file in the sample (has {', '.join(sorted(files)) or 'nothing'}; looked for {', '.join(IMAGE_EXTENSIONS)})"
    )


def open_image(
    files: dict[str, bytes], max_pixels: int = DEFAULT_MAX_PIXELS, decode_size: int | None = None
) -> tuple[Image.Image, str]:
    """The sample's image in RGB and its field's extension; UnreadableImage with the reason when it has none.
    `decode_size`: see open_reduced."""
    image, extension, _ = open_reduced(files, max_pixels, decode_size)
    return image, extension


def open_reduced(
    files: dict[str, bytes], max_pixels: int, decode_size: int | None
) -> tuple[Image.Image, str, tuple[int, int]]:
    """open_image, a JPEG decoded at the smallest DCT scale whose sides are at least `decode_size` (Pillow's
    draft mode; None: full size); also the image's own size."""
    extension = find_image_field(files)
    data = files[extension]
    if not data:
        raise UnreadableImage(f"image file .{extension} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                width, height = opened.size
                if width * height > max_pixels:
                    raise UnreadableImage(
                        f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
                        "(a decompression bomb or an oversized image; raise --max-pixels to accept it)"
                    )
                if decode_size is not None:
                    opened.draft("RGB", (decode_size, decode_size))  # JPEG only; other formats ignore it
                opened.load()
                return opened.convert("RGB"), extension, (width, height)
    except UnreadableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UnreadableImage(f"decompression bomb refused: {error}") from error
    except Exception as error:  # noqa: BLE001 - Pillow raises many types for bad bytes
        raise UnreadableImage(f"image .{extension} cannot be decoded: {type(error).__name__}: {error}") from error


def decode(
    files: dict[str, bytes], max_pixels: int = DEFAULT_MAX_PIXELS, decode_size: int | None = None
) -> DecodedImage:
    """The image with its cheap signals (content hash, pHash, PDQ, thumbnail); `decode_size`: see open_reduced."""
    image, extension, (width, height) = open_reduced(files, max_pixels, decode_size)
    return DecodedImage(
        image=image,
        extension=extension,
        sha256=hashlib.sha256(files[extension]).hexdigest(),
        phash=perceptual_hash(image),
        width=width,
        height=height,
        pdq=pdq_hashes(image),
        thumb=thumbnail(image),
    )


def thumbnail(image: Image.Image) -> np.ndarray:
    """uint8 (16, 16, 3): the image averaged down (box filter), what the low-detail check compares."""
    return np.asarray(image.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX), dtype=np.uint8)


def perceptual_hash(image: Image.Image) -> int:
    bits = imagehash.phash(image, hash_size=8).hash.flatten()
    return int(np.packbits(bits.astype(np.uint8)).view(">u8")[0])


def pdq_hashes(image: Image.Image) -> np.ndarray:
    """PDQ (Meta's 256-bit perceptual hash) of the image and of its dihedral variants, the image's own first: a
    flipped or quarter-turned copy matches one of them (dedup/io/pdq.py)."""
    return pdq.dihedral_hashes(np.asarray(image))


def caption_of(files: dict[str, bytes]) -> str:
    """The caption: the .txt field, else the "caption" of the .json field, else empty."""
    if "txt" in files:
        return files["txt"].decode("utf-8", errors="replace").strip()
    if "json" in files:
        try:
            meta = json.loads(files["json"])
        except (ValueError, UnicodeDecodeError):
            return ""
        caption = meta.get("caption") if isinstance(meta, dict) else None
        return str(caption) if caption is not None else ""
    return ""
