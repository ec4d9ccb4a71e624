"""The header scan behind write's byte-range copy: read straight from the 512-byte headers where every header
is plain, and exactly what tarfile reads everywhere (a wrong span would copy the wrong bytes)."""

from __future__ import annotations

import io
import tarfile

import pytest
from conftest import FLICKR

from dedup.io import tarspans


def spans_by_tarfile(path: str) -> list[tuple]:
    """The reference: the same grouping over members read by tarfile."""
    members = tarspans._tarfile_members(path)
    original = tarspans._plain_ustar_members
    try:
        tarspans._plain_ustar_members = lambda _: members
        return [
            (s.key, s.start, s.end, s.payload, sorted(s.extensions), s.contiguous)
            for s in tarspans._scan.__wrapped__(path, 0, 0)
        ]
    finally:
        tarspans._plain_ustar_members = original


def spans(path: str) -> list[tuple]:
    return [
        (s.key, s.start, s.end, s.payload, sorted(s.extensions), s.contiguous)
        for s in tarspans._scan.__wrapped__(path, 0, 0)
    ]


def write_tar(path, members, format=tarfile.USTAR_FORMAT, end=True) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=format) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    if not end:  # drop the end-of-archive blocks, as some writers do
        data = data[: data.rindex(b"end") + 512] if b"end" in data else data
    path.write_bytes(data)
    return str(path)


def test_real_shard_is_read_from_headers_and_matches_tarfile():
    shard = str(FLICKR / "flickr8k-224-00000.tar")
    assert tarspans._plain_ustar_members(shard) is not None  # the fast path is the one taken
    assert spans(shard) == spans_by_tarfile(shard)
    assert len(spans(shard)) == 1000


def test_prefixed_names_folders_and_a_missing_end_match_tarfile(tmp_path):
    deep = "a/" * 60  # a name over 100 bytes goes into ustar's prefix field
    members = [
        ("s1.jpg", b"x" * 700),
        ("s1.txt", b"caption"),
        ("folder", None),
        ("s1.json", b"{}"),
        (f"{deep}s2.jpg", b"y" * 1024),
        (f"{deep}s2.txt", b""),
        ("s3.jpg", b"end"),
    ]
    for end in (True, False):
        path = write_tar(tmp_path / f"plain-{end}.tar", members, end=end)
        assert tarspans._plain_ustar_members(path) is not None
        assert spans(path) == spans_by_tarfile(path)
    assert [s[0] for s in spans(path)] == ["s1", f"{deep}s2", "s3"]
    assert spans(path)[0][5] is False  # the folder entry inside s1 makes it non-contiguous


@pytest.mark.parametrize("format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_extended_headers_go_to_tarfile(tmp_path, format):
    long_name = "b" * 150  # needs a pax or GNU long-name header
    path = write_tar(tmp_path / "extended.tar", [("s1.jpg", b"x"), (f"{long_name}.jpg", b"y" * 600)], format=format)
    assert tarspans._plain_ustar_members(path) is None
    assert [s[0] for s in spans(path)] == ["s1", long_name]
    assert spans(path) == spans_by_tarfile(path)


def test_a_damaged_header_goes_to_tarfile(tmp_path):
    path = write_tar(tmp_path / "damaged.tar", [("s1.jpg", b"x"), ("s2.jpg", b"y")])
    data = bytearray(open(path, "rb").read())
    data[1024 + 5] ^= 0xFF  # a byte of the second header's name: its checksum no longer holds
    open(path, "wb").write(bytes(data))
    assert tarspans._plain_ustar_members(path) is None


def test_reader_records_the_spans_the_scan_finds(tmp_path):
    """embed records each sample's byte range while it reads (write then needs no scan); they are the scan's."""
    from dedup.io.reader import iter_shard

    deep = "a/" * 60
    members = [
        ("s1.jpg", b"x" * 700),
        ("s1.txt", b"caption"),
        ("folder", None),
        ("s1.json", b"{}"),
        (f"{deep}s2.jpg", b"y" * 1024),
        ("s3.jpg", b"end"),
    ]
    for path in (
        str(FLICKR / "flickr8k-224-00001.tar"),
        write_tar(tmp_path / "odd.tar", members),
        write_tar(
            tmp_path / "pax.tar", [("s1.jpg", b"x"), ("b" * 150 + ".jpg", b"y" * 600)], format=tarfile.PAX_FORMAT
        ),
    ):
        recorded = [(s.key, s.span) for s in iter_shard(path, print)]
        scanned = [(s[0], (s[1], s[2]) if s[5] else None) for s in spans(path)]
        assert recorded == scanned


def test_write_copies_recorded_spans_without_scanning(tmp_path, monkeypatch):
    """With the spans embed recorded, write never scans a shard, and its output is byte for byte the input."""
    import shutil

    from dedup.engine import LocalEngine
    from dedup.settings import EmbedSettings, FindSettings, SelectSettings, WriteSettings
    from dedup.stages.embed import embed
    from dedup.stages.find import find
    from dedup.stages.select import select
    from dedup.stages.write import write

    shard = tmp_path / "in" / "s.tar"
    shard.parent.mkdir()
    shutil.copy(FLICKR / "flickr8k-224-00002.tar", shard)
    run = tmp_path / "run"
    embed([str(shard)], run / "embeddings", EmbedSettings(embedder="pixels"), engine=LocalEngine(1))
    assert (run / "embeddings" / "spans" / "spans_0.npy").exists()
    find(run / "embeddings", run, FindSettings(threshold=None, phash_radius=None))
    select(run / "embeddings", run, SelectSettings(policy="none"))

    def no_scan(path):
        raise AssertionError(f"{path} was scanned")

    monkeypatch.setattr(tarspans, "sample_spans", no_scan)
    write(run / "embeddings", run, run / "out", WriteSettings(samples_per_shard=10_000), engine=LocalEngine(1))
    written = (run / "out" / "dedup-00000.tar").read_bytes()
    original = shard.read_bytes()
    assert written.rstrip(b"\0") == original.rstrip(
        b"\0"
    )  # every sample, headers included; only the end padding may differ


def test_sample_writer_writes_webdataset_tarwriters_bytes(shared):
    """write's member-by-member path (folders, tar.gz, remote inputs) writes the tar webdataset's TarWriter
    writes, without importing it: real photos, captions, a long key (pax header), sorted fields."""
    import webdataset as wds

    from dedup.io.tarwriter import SampleTarWriter

    with tarfile.open(FLICKR / "flickr8k-224-00002.tar") as archive:
        photos = [(m.name, archive.extractfile(m).read()) for m in archive if m.isfile()][:60]
    samples = [
        (name.rsplit(".", 1)[0] + ("/" + "long" * 40 if n % 7 == 0 else ""), {"txt": b"a caption", "jpg": data})
        for n, (name, data) in enumerate(photos)
    ]
    ours, theirs = io.BytesIO(), io.BytesIO()
    writer = SampleTarWriter(ours, mtime=1_700_000_000, owner="dedup")
    reference = wds.TarWriter(theirs, encoder=False, mtime=1_700_000_000, user="dedup", group="dedup")
    for key, files in samples:
        assert writer.write(key, files) == reference.write({"__key__": key, **files})
    writer.close()
    reference.close()
    assert ours.getvalue() == theirs.getvalue() and len(ours.getvalue()) > 60 * 512
