"""The PDQ signal: each image's 256-bit PDQ hash against the hashes of its flips and quarter turns, so a
mirrored copy is found; the search is exact (checked against brute force)."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
from conftest import FLICKR, run_cli, tar_bytes
from PIL import Image

from dedup.io import imaging
from dedup.search import matching


def test_pdq_search_equals_brute_force():
    rng = np.random.default_rng(3)
    rows = 600
    hashes = rng.integers(0, 256, (rows, 32), dtype=np.uint8)
    variants = np.stack([hashes, *(rng.integers(0, 256, (rows, 32), dtype=np.uint8) for _ in range(7))], axis=1)
    for row in range(100):  # variant 5 of rows 0-99 a few bits from the hash of row + 100
        bits = np.unpackbits(hashes[row + 100])
        bits[rng.choice(256, int(rng.integers(0, 45)), replace=False)] ^= 1
        variants[row, 5] = np.packbits(bits)
    expanded = np.unpackbits(variants.reshape(-1, 32), axis=1).reshape(rows, 8, 256)
    own = np.unpackbits(hashes, axis=1)
    distance = (expanded[:, :, None, :] != own[None, None, :, :]).sum(-1).min(axis=1)
    for radius in (31, 40):
        q, r = matching.pdq_matches(variants, hashes, radius)
        assert set(zip(q.tolist(), r.tolist())) == set(zip(*(a.tolist() for a in np.nonzero(distance <= radius))))
        assert len(q) > rows  # every row matches itself, and the planted ones their neighbour


def test_pdq_hashes_equal_the_reference_implementations(shared):
    """dedup's PDQ (dedup/io/pdq.py: the pixels the 64 x 64 samples read, eight hashes from one DCT) against
    pdqhash, the Python binding of Meta's C++ reference, for each flip and turn of real photos, whole, cropped
    off-square and resized: the same bits but where float rounding moves a coefficient across the median (two bits
    swap), so stores hashed either way search alike."""
    import pdqhash

    with tarfile.open(FLICKR / "flickr8k-224-00003.tar") as archive:
        photos = [archive.extractfile(m).read() for m in archive if m.name.endswith(".jpg")][:150]
    differing = []
    for number, data in enumerate(photos):
        image = Image.open(io.BytesIO(data)).convert("RGB")
        image = image.crop((0, 0, image.width, image.height * 3 // 4))  # not square: a turn is not a flip
        if number % 3 == 0:
            image = image.resize((image.width * 3 + number, image.height * 2 + 1))  # a larger blur window
        expected, _ = pdqhash.compute_dihedral(np.asarray(image))
        got = imaging.pdq_hashes(image)
        differing.append(np.unpackbits(got ^ np.packbits(np.stack(expected).astype(np.uint8), axis=1)).sum())
    assert max(differing) <= 2 and sum(1 for bits in differing if bits) <= 2
    assert np.array_equal(imaging.pdq_hashes(Image.new("RGB", (4, 40))), np.zeros((8, 32), np.uint8))


def _mirrored_copies(tmp_path, count: int) -> tuple[list[tuple[str, str]], str]:
    """A shard of Flickr8k photos and, for `count` of them, a mirrored and an upside-down copy."""
    members, pairs = [], []
    with tarfile.open(FLICKR / "flickr8k-224-00007.tar") as archive:
        photos = [(m.name[:-4], archive.extractfile(m).read()) for m in archive if m.name.endswith(".jpg")][:300]
    for number, (key, data) in enumerate(photos):
        members.append((f"{key}.jpg", data))
        if number < count:
            image = Image.open(io.BytesIO(data)).convert("RGB")
            for name, turned in (
                ("mirror", image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
                ("upside", image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)),
            ):
                buffer = io.BytesIO()
                turned.save(buffer, format="JPEG", quality=85)
                members.append((f"{key}-{name}.jpg", buffer.getvalue()))
                pairs.append((key, f"{key}-{name}"))
    shard = tmp_path / "mirrored.tar"
    shard.write_bytes(tar_bytes(members))
    return pairs, str(shard)


def test_pdq_finds_mirrored_copies_of_real_photos_and_merges_nothing_else(tmp_path, shared):
    pairs, shard = _mirrored_copies(tmp_path, 40)
    hashes_only = [
        "--set",
        "find.threshold=off",
        "--set",
        "find.corroborate_threshold=off",
        "--set",
        "find.phash_radius=4",
        "--set",
        "find.low_detail_tolerance=off",  # its thumbnail signal finds mirrored flat photos too
    ]
    for name, extra in (("without", []), ("with", ["--set", "find.pdq_radius=31"])):
        run_cli("run", shard, "--config", "offline", "--run-dir", tmp_path / name, *hashes_only, *extra)
    group = {}
    for name in ("without", "with"):
        rows = pq.read_table(tmp_path / name / "groups.parquet", columns=["key", "group_id"]).to_pylist()
        group[name] = {row["key"]: row["group_id"] for row in rows}
    found = {name: sum(group[name][a] == group[name][b] for a, b in pairs) for name in group}
    assert found["without"] == 0  # a 64-bit pHash does not see a mirror
    assert found["with"] >= 0.95 * len(pairs)
    sizes = np.bincount(list(group["with"].values()))
    assert sizes.max() <= 3  # a photo and its two copies: no unrelated photo merged
    signals = pq.read_table(tmp_path / "with" / "pairs.parquet", columns=["signal"])["signal"].to_pylist()
    assert set(signals) == {"pdq"}


def test_purge_finds_mirrored_copies_of_reference_photos(tmp_path, shared):
    pairs, shard = _mirrored_copies(tmp_path, 30)
    copies = tmp_path / "copies.tar"  # the flipped copies alone, as a training set
    with tarfile.open(shard) as archive:
        copies.write_bytes(
            tar_bytes(
                [
                    (m.name, archive.extractfile(m).read())
                    for m in archive
                    if m.name.endswith(("-mirror.jpg", "-upside.jpg"))
                ]
            )
        )
    signals = ["--set", "find.threshold=off", "--set", "find.corroborate_threshold=off"]
    run_cli(
        "purge",
        copies,
        "--against",
        FLICKR / "flickr8k-224-00007.tar",
        "--config",
        "offline",
        "--run-dir",
        tmp_path / "run",
        "--no-write",
        *signals,
        "--set",
        "find.pdq_radius=31",
    )
    matched = json.loads((tmp_path / "run" / "purge.json").read_text())["matched_by_signal"]
    assert matched["pdq"] >= 0.95 * len(pairs) and matched["phash"] == 0
