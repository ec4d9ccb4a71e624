"""Low-detail images of the kind web corpora are full of and hashes confuse: numbers and words rendered on flat
backgrounds, small grayscale digits, single-shape icons. Every image differs from every other in content (another
number, word, glyph, shape or colour), so none is a duplicate of another; a few get an exact and a re-encoded
copy, which must still be found. Used by tests/test_low_detail.py and benchmarks/low_detail.py."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SHAPES = ("circle", "square", "triangle", "diamond", "bar", "ring")
COLOURS = ((220, 30, 30), (30, 120, 220), (30, 160, 60), (240, 180, 20), (120, 40, 160), (20, 20, 20))
BACKGROUNDS = ((255, 255, 255), (245, 245, 240), (230, 236, 245), (250, 235, 235))


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _text(text: str, size: tuple[int, int], font_size: int, background, ink) -> Image.Image:
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=font_size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text(((size[0] - right - left) / 2, (size[1] - bottom - top) / 2), text, fill=ink, font=font)
    return image


def _icon(shape: str, colour, background, side: int = 96) -> Image.Image:
    image = Image.new("RGB", (side, side), background)
    draw = ImageDraw.Draw(image)
    a, b = side * 0.2, side * 0.8
    if shape == "circle":
        draw.ellipse((a, a, b, b), fill=colour)
    elif shape == "square":
        draw.rectangle((a, a, b, b), fill=colour)
    elif shape == "triangle":
        draw.polygon(((side / 2, a), (b, b), (a, b)), fill=colour)
    elif shape == "diamond":
        draw.polygon(((side / 2, a), (b, side / 2), (side / 2, b), (a, side / 2)), fill=colour)
    elif shape == "bar":
        draw.rectangle((a, side * 0.42, b, side * 0.58), fill=colour)
    else:
        draw.ellipse((a, a, b, b), outline=colour, width=max(2, side // 12))
    return image


def low_detail_images(seed: int = 0) -> list[tuple[str, Image.Image]]:
    """(name, image) of distinct low-detail images: 60 numbers, 40 words, 10 small digits, 36 icons."""
    rng = random.Random(seed)
    images: list[tuple[str, Image.Image]] = []
    number_size = rng.randint(30, 40)
    for number in rng.sample(range(10, 10_000), 60):
        images.append((f"number-{number}", _text(str(number), (128, 64), number_size, (255, 255, 255), (0, 0, 0))))
    words = ["SALE", "NEW", "FREE", "OPEN", "STOP", "HELLO", "LOGIN", "MENU", "HOME", "SHOP", "BUY NOW", "50% OFF",
             "CLOSED", "EXIT", "INFO", "HELP", "SEARCH", "CART", "BACK", "NEXT", "SIGN UP", "ABOUT", "BLOG", "NEWS",
             "LIVE", "HOT", "TOP 10", "BEST", "DEAL", "GIFT", "SAVE", "JOIN", "PLAY", "WIN", "DOWNLOAD", "CONTACT",
             "FAQ", "SUPPORT", "LOGOUT", "SETTINGS"]  # fmt: skip
    word_size, digit_size, icon_side = rng.randint(24, 32), rng.randint(18, 24), rng.randint(64, 128)
    for index, word in enumerate(words):
        background, ink = rng.choice(BACKGROUNDS), rng.choice(COLOURS)
        images.append((f"word-{index}", _text(word, (160, 64), word_size, background, ink)))
    for digit in range(10):
        images.append(
            (f"digit-{digit}", _text(str(digit), (28, 28), digit_size, (0, 0, 0), (255, 255, 255)).convert("L"))
        )
    for shape in SHAPES:
        for colour_index, colour in enumerate(COLOURS):
            images.append((f"icon-{shape}-{colour_index}", _icon(shape, colour, (255, 255, 255), icon_side)))
    return images


def write_low_detail_shard(path: Path, seed: int = 0, copies: int = 20) -> tuple[list[str], list[tuple[str, str]]]:
    """A shard of the distinct images and, for `copies` of them, an exact and a re-encoded copy. Returns the keys
    of the distinct images and the true pairs (copy, original)."""
    rng = random.Random(seed + 1)
    images = low_detail_images(seed)
    members: list[tuple[str, bytes]] = []
    pairs: list[tuple[str, str]] = []
    for name, image in images:
        members.append((f"{name}.jpg", _jpeg(image)))
    for name, image in rng.sample(images, copies):
        data = _jpeg(image)
        members.append((f"{name}-exact.jpg", data))
        members.append((f"{name}-reencode.jpg", _jpeg(Image.open(io.BytesIO(data)).convert("RGB"), 70)))
        pairs += [(f"{name}-exact", name), (f"{name}-reencode", name)]
    with tarfile.open(path, "w") as archive:
        for member_name, data in members:
            info = tarfile.TarInfo(member_name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return [name for name, _ in images], pairs
