"""Where each sample of a plain tar shard lies, as a byte range, so `write` can copy kept samples whole
(headers and data, exactly as they were) with `os.copy_file_range`, never parsing or re-encoding members.

The scan reads only headers (the tar is opened seekable, so data blocks are skipped) and groups members into
samples by the reader's rule (`dedup/io/reader.py`), so span i is sample i of `iter_shard`. It is used only
after `check_inputs_unchanged` has confirmed the shard is the one embed read and validated.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from dedup.io.reader import member_end, member_key, starts_new_sample

BLOCK = tarfile.BLOCKSIZE


@dataclass
class SampleSpan:
    key: str
    start: int  # the first header of the sample's first member (long-name and pax headers included)
    end: int  # the end of its last member's padded data
    payload: int = 0  # bytes of member data
    extensions: set = field(default_factory=set)
    contiguous: bool = True  # False where a skipped member (a folder entry) lies inside the sample


def is_plain_local_tar(url: str) -> bool:
    return url.endswith(".tar") and os.path.isfile(url)


def sample_spans(path: str) -> list[SampleSpan]:
    """The spans of every sample of a plain tar (scanned once per process while the file is unchanged)."""
    stat = os.stat(path)
    return _scan(path, stat.st_size, stat.st_mtime_ns)


@dataclass
class SpanTable:
    """The spans of a shard's samples as columns, indexed by sample index."""

    keys: list[str]
    starts: np.ndarray
    ends: np.ndarray
    payloads: np.ndarray
    contiguous: np.ndarray


def span_table(path: str) -> SpanTable:
    stat = os.stat(path)
    return _span_table(path, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _span_table(path: str, size: int, mtime_ns: int) -> SpanTable:
    spans = sample_spans(path)

    def column(name: str, dtype) -> np.ndarray:
        return np.array([getattr(span, name) for span in spans], dtype=dtype)

    return SpanTable(
        [span.key for span in spans],
        column("start", np.int64),
        column("end", np.int64),
        column("payload", np.int64),
        column("contiguous", bool),
    )


@lru_cache(maxsize=8)
def _scan(path: str, size: int, mtime_ns: int) -> list[SampleSpan]:
    members = _plain_ustar_members(path)
    if members is None:
        members = _tarfile_members(path)
    spans: list[SampleSpan] = []
    current: SampleSpan | None = None
    skipped = False
    for member in members:
        if member.is_dir:
            skipped = True
            continue
        key, extension = member_key(member.name)
        end = member_end(member.data_offset, member.size, member.is_file)
        if current is None or starts_new_sample(key, extension, current.key, current.extensions):
            current = SampleSpan(key, member.header_offset, end)
            spans.append(current)
        elif skipped:
            current.contiguous = False
        current.end = end
        current.payload += member.size if member.is_file else 0
        if extension is not None:
            current.extensions.add(extension)
        skipped = False
    return spans


@dataclass
class Member:
    name: str
    header_offset: int  # its first header (a pax or long-name header where there is one)
    data_offset: int
    size: int
    is_file: bool
    is_dir: bool


def _tarfile_members(path: str) -> list[Member]:
    with tarfile.open(path, "r:") as archive:
        return [Member(m.name, m.offset, m.offset_data, m.size, m.isfile(), m.isdir()) for m in archive]


FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)


def _plain_ustar_members(path: str) -> list[Member] | None:
    """The members of a tar whose headers are all plain (files and folders, no pax, long-name, link or sparse
    headers, sizes in octal, checksums right), read from the 512-byte headers alone: tarfile builds a
    TarInfo per header and parses every field, which made the scan most of `write`'s time. None when any
    header is not plain; the caller then scans with tarfile, which knows every extension."""
    members: list[Member] = []
    offset = 0
    with open(path, "rb", buffering=0) as handle:
        fd = handle.fileno()
        while True:
            header = os.pread(fd, BLOCK, offset)
            if header == bytes(BLOCK) or (not header and members):  # the end (tarfile allows a missing one)
                return members
            parsed = _plain_header(header)
            if parsed is None:
                return None
            name, size, is_dir = parsed
            members.append(Member(name, offset, offset + BLOCK, size, not is_dir, is_dir))
            offset = member_end(offset + BLOCK, size, True)  # the next header


def _plain_header(header: bytes) -> tuple[str, int, bool] | None:
    """(name, size, is a folder) of a plain file or folder header, as tarfile would read them; None otherwise."""
    if len(header) < BLOCK:
        return None
    kind = header[156:157]
    if header[124] & 0x80 or kind not in FILE_TYPES + (tarfile.DIRTYPE,) or not _checksum_ok(header):
        return None
    try:
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return None
    name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    if header[257:263] == b"ustar\0":
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        name = f"{prefix}/{name}" if prefix else name
    is_dir = kind == tarfile.DIRTYPE or (kind == tarfile.AREGTYPE and name.endswith("/"))
    return (name.rstrip("/") if is_dir else name), size, is_dir


def key_at(path: str, fd: int, offset: int) -> str | None:
    """The sample key of the member whose (first) header starts at `offset`, or None if none does."""
    parsed = _plain_header(os.pread(fd, BLOCK, offset))
    if parsed is not None:
        return member_key(parsed[0])[0]
    try:  # a pax or long-name header first: tarfile reads the member from there
        with open(path, "rb") as handle:
            handle.seek(offset)
            with tarfile.open(fileobj=handle, mode="r:") as archive:
                member = archive.next()
    except tarfile.TarError:
        return None
    return member_key(member.name)[0] if member is not None else None


def _checksum_ok(header: bytes) -> bool:
    try:
        stored = int(header[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    return stored == unsigned


def open_for_copy(path: str) -> int:
    """A descriptor to copy ranges from, read ahead as `cp` reads (sequential advice doubles the window)."""
    fd = os.open(path, os.O_RDONLY)
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    return fd


def copy_range(source_fd: int, target_fd: int, start: int, count: int) -> None:
    """Append bytes [start, start + count) of the source to the target's current position."""
    while count > 0:
        try:
            done = os.copy_file_range(source_fd, target_fd, count, start)
        except OSError:  # file systems without it: plain reads and writes
            done = os.write(target_fd, os.pread(source_fd, min(count, 1 << 24), start))
        if done == 0:
            raise OSError(f"input ended {count} bytes early")
        start += done
        count -= done


def end_of_archive(size: int) -> bytes:
    """Two zero blocks, then zeros up to a whole record, as tarfile ends an archive."""
    end = size + 2 * BLOCK
    return b"\0" * (2 * BLOCK + (-end) % tarfile.RECORDSIZE)
