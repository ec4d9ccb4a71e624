"""Plant near-duplicates whose ground truth is known into real shards: for tests, benchmarks and the demo.

Each planted copy is a transformed version of a real sample's image, given a new key and the source's caption
(or, with `paraphrase`, another of the source's human captions, as web copies carry captions of their own),
and placed in a shard chosen at random, so copies land across shards. The ground truth (which keys belong
together) is returned and written as JSON.

Transforms: the light ones (exact copy, JPEG re-encode, resize, a 2-5 % crop) and NEAR_DUPLICATE_EDITS, the
edits web copies carry that no content hash sees: a crop to 60-85 % of each side, a mirror image, colour and
contrast shifts, a border, a text overlay.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from dedup.io.atomic import atomic_open, write_json
from dedup.io.reader import Sample, iter_shard
from dedup.io.runfolder import planted_record
from dedup.io.sources import expand_shards

LIGHT_EDITS = ("exact", "reencode", "resize", "crop")
NEAR_DUPLICATE_EDITS = ("crop-large", "flip", "colour", "border", "overlay")
# edits the copy detector never trained on (its augmentations are the light and near-duplicate ones): a
# mirrored crop of half the photo, the photo pasted into another, the photo as a template with another
# photo's subject pasted on it (Webster 2023's template verbatims), and style filters
OUT_OF_FAMILY_EDITS = ("flip-crop-large", "composite", "template", "posterize", "cartoon", "vignette")
NEEDS_ANOTHER_PHOTO = ("composite", "template")
TRANSFORMS = LIGHT_EDITS + NEAR_DUPLICATE_EDITS + OUT_OF_FAMILY_EDITS
OVERLAY_WORDS = ("SALE", "new", "© photo", "wallpaper", "HD", "free download", "4K", "best of", "top 10", "#1")


def _encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def transform_image(data: bytes, kind: str, rng: random.Random, other: bytes | None = None) -> bytes:
    """The copy of image `data` that edit `kind` makes; `other` is an unrelated photo, for the edits that
    combine two (NEEDS_ANOTHER_PHOTO)."""
    if kind == "exact":
        return data
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    if kind == "reencode":
        return _encode_jpeg(image, quality=rng.choice((50, 60, 70, 80)))
    if kind == "resize":
        scale = rng.uniform(0.6, 0.9)
        return _encode_jpeg(
            image.resize((max(8, round(width * scale)), max(8, round(height * scale))), Image.Resampling.LANCZOS), 90
        )
    if kind == "crop":
        dx, dy = round(width * rng.uniform(0.02, 0.05)), round(height * rng.uniform(0.02, 0.05))
        left, top = rng.randint(0, dx), rng.randint(0, dy)
        return _encode_jpeg(image.crop((left, top, width - (dx - left), height - (dy - top))), 90)
    if kind in NEAR_DUPLICATE_EDITS:
        return _encode_jpeg(_near_duplicate(image, kind, rng), rng.choice((75, 85, 95)))
    if kind in OUT_OF_FAMILY_EDITS:
        if kind in NEEDS_ANOTHER_PHOTO and other is None:
            raise ValueError(f"edit {kind!r} pastes one photo into another: give the other photo")
        partner = Image.open(io.BytesIO(other)).convert("RGB") if other is not None else None
        return _encode_jpeg(_out_of_family(image, kind, rng, partner), rng.choice((75, 85, 95)))
    raise ValueError(f"unknown transform {kind!r}; use one of {TRANSFORMS}")


def _out_of_family(image: Image.Image, kind: str, rng: random.Random, other: Image.Image | None) -> Image.Image:
    from PIL import ImageOps

    width, height = image.size
    if kind == "flip-crop-large":  # half to three quarters of each side, mirrored
        keep_w, keep_h = round(width * rng.uniform(0.5, 0.75)), round(height * rng.uniform(0.5, 0.75))
        left, top = rng.randint(0, width - keep_w), rng.randint(0, height - keep_h)
        return ImageOps.mirror(image.crop((left, top, left + keep_w, top + keep_h)))
    if kind == "composite":  # the photo at 40-70 % of the other's side, pasted into it
        assert other is not None
        scale = rng.uniform(0.4, 0.7)
        small = image.resize((round(other.width * scale), round(other.height * scale)), Image.Resampling.LANCZOS)
        canvas = other.copy()
        canvas.paste(small, (rng.randint(0, canvas.width - small.width), rng.randint(0, canvas.height - small.height)))
        return canvas
    if kind == "template":  # the photo kept as the background, another photo's centre pasted on it as the subject
        assert other is not None
        side = rng.uniform(0.3, 0.45)
        cut_w, cut_h = round(other.width * side), round(other.height * side)
        cx, cy = (other.width - cut_w) // 2, (other.height - cut_h) // 2
        subject = other.crop((cx, cy, cx + cut_w, cy + cut_h)).resize(
            (round(width * side), round(height * side)), Image.Resampling.LANCZOS
        )
        canvas = image.copy()
        canvas.paste(subject, (rng.randint(0, width - subject.width), rng.randint(0, height - subject.height)))
        return canvas
    if kind == "posterize":
        return ImageOps.posterize(image, rng.choice((2, 3)))
    if kind == "cartoon":  # smoothed colours quantized to a few, dark edges drawn over them
        import cv2

        pixels = np.asarray(image)
        smooth = cv2.bilateralFilter(pixels, 9, 75, 75)
        quantized = np.asarray(Image.fromarray(smooth).quantize(colors=rng.choice((6, 8, 12))).convert("RGB"))
        gray = cv2.medianBlur(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY), 7)
        edges = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 11, 7)
        return Image.fromarray(np.where(edges[..., None] > 0, quantized, 0).astype(np.uint8))
    # vignette: dark from the middle of each side outwards, the corners at 5-30 % of their brightness
    y, x = np.mgrid[0:height, 0:width]
    radius = np.hypot((x - width / 2) / (width / 2), (y - height / 2) / (height / 2)) / np.sqrt(2)
    floor = rng.uniform(0.05, 0.3)
    falloff = 1 - (1 - floor) * np.clip(1.15 * radius, 0, 1) ** 1.5
    return Image.fromarray((np.asarray(image, np.float32) * falloff[..., None]).round().astype(np.uint8))


def _near_duplicate(image: Image.Image, kind: str, rng: random.Random) -> Image.Image:
    from PIL import ImageDraw, ImageEnhance, ImageOps

    width, height = image.size
    if kind == "crop-large":
        keep_w, keep_h = round(width * rng.uniform(0.6, 0.85)), round(height * rng.uniform(0.6, 0.85))
        left, top = rng.randint(0, width - keep_w), rng.randint(0, height - keep_h)
        return image.crop((left, top, left + keep_w, top + keep_h))
    if kind == "flip":
        return ImageOps.mirror(image)
    if kind == "colour":
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.7, 1.3))
        return ImageEnhance.Color(image).enhance(rng.uniform(0.5, 1.5))
    if kind == "border":
        side = round(min(width, height) * rng.uniform(0.05, 0.15))
        colour = rng.choice(((0, 0, 0), (255, 255, 255), (rng.randrange(256), rng.randrange(256), rng.randrange(256))))
        return ImageOps.expand(image, border=side, fill=colour)
    # overlay: a word or two in a corner band, as watermarks and meme captions are
    image = image.copy()
    draw = ImageDraw.Draw(image)
    size = max(8, round(height * rng.uniform(0.08, 0.14)))
    x, y = rng.randint(0, max(0, width // 3)), rng.choice((rng.randint(0, height // 8), height - size - height // 12))
    colour = rng.choice(((255, 255, 255), (0, 0, 0), (255, 230, 0)))
    draw.text((x, y), rng.choice(OVERLAY_WORDS), fill=colour, font=_font(size))
    return image


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


@dataclass
class PlantedSet:
    shards: list[str]
    groups: list[list[str]] = field(default_factory=list)  # each: source key first, then its copies
    transforms: dict[str, str] = field(default_factory=dict)  # copy key -> transform
    samples: int = 0

    def to_json(self) -> dict:
        return {"shards": self.shards, "groups": self.groups, "transforms": self.transforms, "samples": self.samples}


def plant(
    source_shards: str | list[str],
    out_dir: str | Path,
    sources: int = 100,
    copies: int | tuple[int, int] | list[int] = 2,
    transforms: Iterable[str] = LIGHT_EDITS,
    seed: int = 0,
    limit: int | None = None,
    shard_size: int | None = None,
    prefix: str = "planted",
    eligible: Callable[[Sample], bool] | None = None,
    donors: str | list[str] | None = None,
    paraphrase: bool = False,
    one_edit_per_source: bool = False,
    others: str | list[str] | None = None,
) -> PlantedSet:
    """Copy the samples of `source_shards` into `out_dir` with planted near-duplicates.

    `sources` samples are picked at random; each gets `copies` copies (a random count in a (low, high) range,
    or a list with one count per source, for heavy-tailed duplication),
    transform cycled through `transforms`. With `shard_size` the output is re-cut into shards of that many
    samples; otherwise it keeps the input's shard count. With `donors`, the copies are made of the donor
    shards' images instead (for example test images hidden in training shards); donors are not copied in.
    With `paraphrase`, each copy's caption is another of the source's captions (its json `captions`, as
    Flickr8k's five human captions) where it has more than one. With `one_edit_per_source`, all of a source's
    copies take one edit (the sources cycle through `transforms`), so what an edit does is measured per source.
    The edits that combine two photos take the other from `others` (shards that are not copied in; each
    photo there used once), else from the samples not chosen as sources.
    """
    rng = random.Random(seed)
    urls = expand_shards(source_shards)
    originals: list[Sample] = []
    for url in urls:
        for sample in iter_shard(url, on_fault=lambda fault: None):
            originals.append(sample)
            if limit and len(originals) >= limit:
                break
        if limit and len(originals) >= limit:
            break
    shard_count = max(1, -(-len(originals) // shard_size)) if shard_size else len(urls)
    buckets: list[list[dict]] = [[] for _ in range(shard_count)]
    for position, sample in enumerate(originals):
        buckets[position * shard_count // len(originals)].append({"__key__": sample.key, **sample.files})

    kinds = list(transforms)
    planted = PlantedSet(shards=[])
    pool = (
        [s for url in expand_shards(donors) for s in iter_shard(url, on_fault=lambda fault: None)]
        if donors
        else originals
    )
    candidates = [i for i, sample in enumerate(pool) if eligible is None or eligible(sample)]
    if isinstance(copies, list) and len(copies) != sources:
        raise ValueError(f"copies lists {len(copies)} counts for {sources} sources")
    chosen = rng.sample(candidates, min(sources, len(candidates)))
    partners = _partner_photos(others, [pool[i] for i in chosen], originals, random.Random(f"partners {seed}"))
    for number, source_index in enumerate(chosen):
        source = pool[source_index]
        image_field = next(ext for ext in ("jpg", "jpeg", "png", "webp") if ext in source.files)
        count = (
            copies if isinstance(copies, int) else copies[number] if isinstance(copies, list) else rng.randint(*copies)
        )
        group = [source.key]
        for copy_number in range(count):
            kind = kinds[number % len(kinds)] if one_edit_per_source else kinds[(number + copy_number) % len(kinds)]
            key = f"planted-{source.key.replace('/', '_')}-{copy_number}"
            files = {ext: data for ext, data in source.files.items() if ext != image_field and ext != "json"}
            other = next(partners) if kind in NEEDS_ANOTHER_PHOTO else None
            files["jpg" if kind != "exact" else image_field] = transform_image(
                source.files[image_field], kind, rng, other
            )
            meta = {"key": key, "planted_from": source.key, "transform": kind}
            if paraphrase and (caption := _other_caption(source.files, rng)) is not None:
                files["txt"], meta["caption"] = caption.encode(), caption
            files["json"] = json.dumps(meta).encode()
            bucket = buckets[rng.randrange(shard_count)]
            bucket.insert(rng.randint(0, len(bucket)), {"__key__": key, **files})
            group.append(key)
            planted.transforms[key] = kind
        planted.groups.append(group)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for number, bucket in enumerate(buckets):
        path = out_dir / f"{prefix}-{number:05d}.tar"
        with atomic_open(path, "wb") as handle:
            writer = wds.TarWriter(handle, encoder=False, mtime=0)
            for record in bucket:
                writer.write(record)
            writer.close()
        planted.shards.append(str(path))
        planted.samples += len(bucket)
    write_json(planted_record(out_dir), planted.to_json())
    return planted


def _partner_photos(
    others: str | list[str] | None, chosen: list[Sample], originals: list[Sample], rng: random.Random
) -> Iterator[bytes]:
    """The other photos that composites and templates combine with a source, each used once (two copies on
    one background would be copies of each other), in a random order; read on the first one asked for, with
    a generator of their own, so plantings without such edits are what they were."""
    if others:
        pool = [s for url in expand_shards(others) for s in iter_shard(url, on_fault=lambda fault: None)]
    else:
        used = {sample.key for sample in chosen}
        pool = [sample for sample in originals if sample.key not in used]
    order = list(range(len(pool)))
    rng.shuffle(order)
    for i in order:
        files = pool[i].files
        field = next((ext for ext in ("jpg", "jpeg", "png", "webp") if ext in files), None)
        if field is not None:
            yield files[field]


def _other_caption(files: dict[str, bytes], rng: random.Random) -> str | None:
    """One of the sample's human captions other than its own (.txt), or None when it has no other."""
    try:
        captions = json.loads(files.get("json", b"{}")).get("captions") or []
    except (ValueError, AttributeError):
        return None
    own = files.get("txt", b"").decode("utf-8", "replace").strip()
    others = [str(caption).strip() for caption in captions if str(caption).strip() not in ("", own)]
    return rng.choice(others) if others else None


def planted_pairs(groups: list[list[str]]) -> set[tuple[str, str]]:
    return {(min(a, b), max(a, b)) for group in groups for i, a in enumerate(group) for b in group[i + 1 :]}


def found_pairs(keys: list[str], group_ids: list[int]) -> set[tuple[str, str]]:
    members: dict[int, list[str]] = {}
    for key, group in zip(keys, group_ids):
        members.setdefault(group, []).append(key)
    return planted_pairs([m for m in members.values() if len(m) > 1])


def score(
    truth_groups: list[list[str]],
    keys: list[str],
    group_ids: list[int],
    is_planted: Callable[[str], bool] | None = None,
) -> dict:
    """Pair recall of the planted groups, and precision of the found pairs that touch a planted sample.

    Found pairs between two unplanted samples are natural duplicates of the source data (or false
    matches); they are counted separately, since no ground truth says which.
    """
    truth = planted_pairs(truth_groups)
    planted_keys = {key for group in truth_groups for key in group}
    found = found_pairs(keys, group_ids)
    touching = {pair for pair in found if pair[0] in planted_keys or pair[1] in planted_keys}
    hits = truth & found
    return {
        "planted_pairs": len(truth),
        "found_planted_pairs": len(hits),
        "recall": len(hits) / len(truth) if truth else 1.0,
        "found_pairs_touching_planted": len(touching),
        "precision": len(truth & touching) / len(touching) if touching else 1.0,
        "other_found_pairs": len(found - touching),
    }


def planted_embeddings(
    rows: int,
    dim: int = 512,
    seed: int = 0,
    kind: str = "clustered",
    low: float = 0.92,
    high: float = 0.99,
    chunk: int = 262_144,
    topic_seed: int | None = None,
    topic_count: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors of which the last 1% are planted copies of others at a cosine drawn uniformly from
    [low, high]; returns (vectors, planted pairs as an (n, 2) array of (source, copy)).

    `clustered`: topics around a shared direction, as image embeddings are (unrelated vectors have cosine
    ~0.2, same-topic ones ~0.6); `isotropic`: no structure at all, the hardest case for partitioning.
    Parts of one large collection share `topic_seed` and `topic_count` and differ in `seed`."""
    rng = np.random.default_rng(seed)
    topic_rng = np.random.default_rng(seed if topic_seed is None else topic_seed)
    planted = rows // 100
    base = rows - planted
    vectors = np.empty((rows, dim), np.float32)
    if kind == "clustered":
        shared = topic_rng.standard_normal(dim).astype(np.float32)
        topics = topic_rng.standard_normal((topic_count or max(1, rows // 200), dim), dtype=np.float32)
        topics /= np.linalg.norm(topics, axis=1, keepdims=True)
        topics += 0.8 * shared / np.linalg.norm(shared)
        topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    elif kind != "isotropic":
        raise ValueError(f"kind must be clustered or isotropic, got {kind!r}")
    for start in range(0, rows, chunk):
        count = min(rows, start + chunk) - start
        noise = rng.standard_normal((count, dim), dtype=np.float32)
        vectors[start : start + count] = (
            noise if kind == "isotropic" else topics[rng.integers(0, len(topics), count)] + noise / np.sqrt(dim)
        )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sources = rng.choice(base, planted, replace=False)
    cosine = rng.uniform(low, high, planted).astype(np.float32)
    direction = rng.standard_normal((planted, dim), dtype=np.float32)
    direction -= np.einsum("ij,ij->i", direction, vectors[sources])[:, None] * vectors[sources]
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    vectors[base:] = cosine[:, None] * vectors[sources] + np.sqrt(1 - cosine**2)[:, None] * direction
    return vectors, np.stack([sources, np.arange(base, rows)], axis=1).astype(np.int64)
