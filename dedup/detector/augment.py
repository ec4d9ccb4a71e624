"""The strong augmentations copy detection is trained with (SSCD's "advanced" set, in PIL and torchvision): crops
down to a tenth of the image, flips, rotations, colour, blur, JPEG, borders, text and shape overlays and pasting
onto another photo. Each view of a training pair goes through `augment` independently."""

from __future__ import annotations

import io
import random
import string

from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps
from torchvision.transforms import v2

COLOUR = v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)


def augment(image: Image.Image, size: int, rng: random.Random, background: Image.Image | None = None) -> Image.Image:
    """One strongly edited copy of `image`, `size` x `size` RGB."""
    image = _random_crop(image, rng)
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    if rng.random() < 0.15:
        image = ImageOps.flip(image)
    if rng.random() < 0.15:
        image = image.rotate(rng.choice((90, 180, 270)), expand=True)
    elif rng.random() < 0.25:
        image = image.rotate(rng.uniform(-35, 35), resample=Image.Resampling.BILINEAR, expand=True)
    if rng.random() < 0.8:
        image = COLOUR(image)
    if rng.random() < 0.2:
        image = ImageOps.grayscale(image).convert("RGB")
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.1, 2.0)))
    if rng.random() < 0.2:
        image = _border(image, rng)
    if background is not None and rng.random() < 0.1:
        image = _paste_onto(image, background, rng)
    image = image.resize((size, size), Image.Resampling.BILINEAR)
    if rng.random() < 0.25:
        image = _text_overlay(image, rng)
    if rng.random() < 0.2:
        image = _shape_overlay(image, rng)
    if rng.random() < 0.5:
        image = _jpeg(image, rng.randint(15, 90))
    return image


def _random_crop(image: Image.Image, rng: random.Random) -> Image.Image:
    width, height = image.size
    for _ in range(10):
        area = rng.uniform(0.1, 1.0) * width * height
        aspect = rng.uniform(3 / 4, 4 / 3)
        w, h = round((area * aspect) ** 0.5), round((area / aspect) ** 0.5)
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return image.crop((left, top, left + w, top + h))
    return image


def _border(image: Image.Image, rng: random.Random) -> Image.Image:
    pad = max(1, round(min(image.size) * rng.uniform(0.03, 0.2)))
    return ImageOps.expand(image, border=pad, fill=tuple(rng.randint(0, 255) for _ in range(3)))


def _paste_onto(image: Image.Image, background: Image.Image, rng: random.Random) -> Image.Image:
    canvas = background.copy().convert("RGB")
    scale = rng.uniform(0.5, 0.9)
    small = image.resize((max(1, round(canvas.width * scale)), max(1, round(canvas.height * scale))))
    canvas.paste(small, (rng.randint(0, canvas.width - small.width), rng.randint(0, canvas.height - small.height)))
    return canvas


def _text_overlay(image: Image.Image, rng: random.Random) -> Image.Image:
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=rng.randint(8, max(9, image.height // 5)))
    text = "".join(rng.choice(string.ascii_letters + string.digits + " ") for _ in range(rng.randint(3, 14)))
    position = (rng.randint(0, image.width // 2), rng.randint(0, image.height - 10))
    draw.text(position, text, fill=tuple(rng.randint(0, 255) for _ in range(3)), font=font)
    return image


def _shape_overlay(image: Image.Image, rng: random.Random) -> Image.Image:
    """Emoji-like marks: filled ellipses and rectangles of one colour."""
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 3)):
        side = rng.randint(image.width // 10, image.width // 3)
        left, top = rng.randint(0, image.width - side), rng.randint(0, image.height - side)
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((left, top, left + side, top + side), fill=colour)
    return image


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")
