"""Where each sample of a plain tar shard lies, as a byte range, so `write` can copy kept samples whole
(headers and data, exactly as they were) with `os.copy_file_range`, never parsing or re-encoding members.

The scan reads only headers (the tar is opened seekable, so data blocks are skipped) and groups members into
samples by the reader's rule (`dedup/reader.py`), so span i is sample i of `iter_shard`. It is used only
after `check_inputs_unchanged` has confirmed the shard is the one embed read and validated.
"""
from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass, field
from functools import lru_cache

from dedup.reader import member_key, starts_new_sample

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


@lru_cache(maxsize=8)
def _scan(path: str, size: int, mtime_ns: int) -> list[SampleSpan]:
    spans: list[SampleSpan] = []
    current: SampleSpan | None = None
    skipped = False
    with tarfile.open(path, "r:") as archive:
        for member in archive:
            if member.isdir():
                skipped = True
                continue
            key, extension = member_key(member.name)
            end = member.offset_data + -(-member.size // BLOCK) * BLOCK if member.isfile() else member.offset_data
            if current is None or starts_new_sample(key, extension, current.key, current.extensions):
                current = SampleSpan(key, member.offset, end)
                spans.append(current)
            elif skipped:
                current.contiguous = False
            current.end = end
            current.payload += member.size if member.isfile() else 0
            if extension is not None:
                current.extensions.add(extension)
            skipped = False
    return spans


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
