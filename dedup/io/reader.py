"""Stream samples out of WebDataset shards, keeping every file of a sample and every fault as a value.

A sample is the run of consecutive tar members that share a key (the member path up to the first dot of
its file name, as webdataset defines it). Nothing is extracted to disk: member names only become keys,
and names that could escape a folder when someone extracts our output are refused per sample.

Faults never raise out of `iter_shard`: they are handed to `on_fault` with the shard, key and reason, and
reading goes on with the next sample, or stops at the end of a broken shard.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from dedup.io.remote import RemoteReadError, RetryPolicy
from dedup.io.sources import folder_part, image_files, is_image_name, is_remote, open_shard
from dedup.settings.run import DEFAULT_MAX_MEMBER_BYTES

KEY_AND_EXTENSION = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


@dataclass
class Sample:
    shard: str
    key: str
    index: int  # position of the sample in its shard, counted over every sample, faulty or not
    files: dict[str, bytes] = field(default_factory=dict)
    # the member order, so output tars list files exactly as the input did
    order: list[str] = field(default_factory=list)
    # bytes [start, end) of the tar stream that hold the sample, headers included; None where a folder entry
    # interrupts it. For a plain tar these are file offsets: `write` copies the range as it is.
    span: tuple[int, int] | None = None


@dataclass(frozen=True)
class Fault:
    shard: str
    reason: str
    key: str | None = None  # None: the fault concerns the shard, not one sample
    index: int | None = None
    lost_connection: bool = False  # a remote shard that failed on every try: what was read of it is not whole


FaultHandler = Callable[[Fault], None]


def split_member_name(name: str) -> tuple[str, str] | None:
    match = KEY_AND_EXTENSION.match(name)
    if match is None:
        return None
    return match.group(1), match.group(2)


def member_key(name: str) -> tuple[str, str | None]:
    """A member's sample key and field (its extension); a name without an extension is its own key."""
    parsed = split_member_name(name)
    return parsed if parsed else (name, None)


def starts_new_sample(key: str, extension: str | None, current_key: str | None, current_extensions) -> bool:
    """webdataset's rule: consecutive members with one key form a sample, unless a field repeats."""
    return key != current_key or (extension is not None and extension in current_extensions)


def member_end(data_offset: int, size: int, is_file: bool) -> int:
    """Where a member's data ends in its tar, padded to whole blocks (links and folders hold no data)."""
    return data_offset + (-(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE if is_file else 0)


def unsafe_name_reason(name: str) -> str | None:
    if name.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", name):
        return f"member {name!r} has an absolute path"
    parts = re.split(r"[\\/]", name)
    if ".." in parts:
        return f"member {name!r} climbs out of its folder with '..'"
    if "\x00" in name:
        return f"member {name!r} contains a NUL byte"
    return None


class _SampleBuilder:
    """Collects consecutive members of one key; a sample with any member fault is emitted as a fault."""

    def __init__(self, shard: str, key: str, index: int, start: int):
        self.sample = Sample(shard=shard, key=key, index=index, span=(start, start))
        self.problem: str | None = None

    def extend_to(self, member: tarfile.TarInfo, after_folder: bool) -> None:
        """The sample's bytes now run to the end of this member's padded data."""
        if self.sample.span is None or after_folder:
            self.sample.span = None
            return
        self.sample.span = (self.sample.span[0], member_end(member.offset_data, member.size, member.isfile()))

    def add(self, extension: str, data: bytes) -> None:
        self.sample.files[extension] = data
        self.sample.order.append(extension)

    def refuse(self, reason: str) -> None:
        self.problem = self.problem or reason


def iter_shard(
    url: str,
    on_fault: FaultHandler,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    retry: RetryPolicy | None = None,
) -> Iterator[Sample]:
    """Yield every readable sample of one shard; report everything else to `on_fault`."""
    next_index = 0
    current: _SampleBuilder | None = None

    def finish(builder: _SampleBuilder | None) -> Iterator[Sample]:
        if builder is None:
            return
        if builder.problem is not None:
            on_fault(Fault(url, builder.problem, builder.sample.key, builder.sample.index))
        else:
            yield builder.sample

    try:
        stream = open_shard(url, retry)
    except Exception as error:  # noqa: BLE001 - any open failure is a shard fault
        lost = isinstance(error, RemoteReadError)
        on_fault(Fault(url, f"cannot open shard: {type(error).__name__}: {error}", lost_connection=lost))
        return
    try:
        with stream, tarfile.open(fileobj=stream, mode="r|*") as archive:
            after_folder = False
            for member in archive:
                if member.isdir():
                    after_folder = True
                    continue
                key, extension = member_key(member.name)
                if current is None or starts_new_sample(key, extension, current.sample.key, current.sample.files):
                    yield from finish(current)
                    current = _SampleBuilder(url, key, next_index, member.offset)
                    next_index += 1
                    after_folder = False
                current.extend_to(member, after_folder)
                after_folder = False
                if member.name.startswith("__") or "/__" in member.name:
                    current.refuse(f"member {member.name!r} is a reserved webdataset name")
                    continue
                reason = unsafe_name_reason(member.name)
                if reason is None and not member.isfile():
                    kind = "a link" if (member.issym() or member.islnk()) else "not a regular file"
                    reason = f"member {member.name!r} is {kind}; only regular files are read"
                if reason is None and extension is None:
                    reason = f"member {member.name!r} has no extension, so it belongs to no sample field"
                if reason is None and member.size > max_member_bytes:
                    reason = f"member {member.name!r} is {member.size} bytes, over the limit of {max_member_bytes}"
                if reason is not None:
                    current.refuse(reason)
                    continue
                assert extension is not None  # a member without one was refused above
                handle = archive.extractfile(member)
                current.add(extension, handle.read() if handle else b"")
        yield from finish(current)
    except Exception as error:  # noqa: BLE001 - a broken shard ends that shard only
        if isinstance(error, RemoteReadError):
            on_fault(Fault(url, f"remote shard unreadable: {error}", lost_connection=True))
            return
        if current is not None:
            current.refuse(f"shard ended while this sample was read: {type(error).__name__}: {error}")
            yield from finish(current)
        on_fault(Fault(url, _describe_shard_error(error, next_index)))


def _describe_shard_error(error: Exception, samples_seen: int) -> str:
    text = f"{type(error).__name__}: {error}"
    if samples_seen == 0 and "empty file" in str(error):
        return "zero-byte or empty shard: it holds no tar data"
    if samples_seen == 0:
        return f"not a readable tar or tar.gz file ({text})"
    return f"shard is truncated or corrupt after {samples_seen} samples ({text})"


def iter_images(url: str, on_fault: FaultHandler, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> Iterator[Sample]:
    """A plain image file, a folder of them or a part of a folder: each image is a sample keyed by its path in
    the folder without suffix."""
    part = folder_part(url)
    root = Path(part.folder if part else url)
    paths = part.images() if part else [root] if root.is_file() else image_files(root)
    for index, path in enumerate(paths):
        relative = path.name if root.is_file() else path.relative_to(root).as_posix()
        key, extension = relative.split(".", 1) if "." in relative else (relative, "")
        try:
            size = path.stat().st_size
            if size > max_member_bytes:
                on_fault(Fault(url, f"{relative} is {size} bytes, over the limit of {max_member_bytes}", key, index))
                continue
            yield Sample(shard=url, key=key, index=index, files={extension: path.read_bytes()}, order=[extension])
        except OSError as error:
            on_fault(Fault(url, f"{relative} cannot be read: {error}", key, index))


def iter_source(
    url: str,
    on_fault: FaultHandler,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    retry: RetryPolicy | None = None,
) -> Iterator[Sample]:
    """Samples of a shard, an image file, or a folder of images; `retry`: how a remote shard is read through
    faults (dedup/io/remote.py)."""
    if not is_remote(url) and (os.path.isdir(url) or is_image_name(url) or folder_part(url)):
        return iter_images(url, on_fault, max_member_bytes)
    return iter_shard(url, on_fault, max_member_bytes, retry)


def iter_selected(
    wanted: Iterable[tuple[str, int]],
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    retry: RetryPolicy | None = None,
) -> Iterator[Sample]:
    """The samples at the given (shard, sample_index) places, shard by shard in the order first named;
    each shard is read only up to the last index wanted from it. Faults were recorded when the shard was
    embedded, so they are not reported again; a remote shard lost on every try raises RemoteReadError, since
    the samples asked for can then not be given."""

    def on_fault(fault: Fault) -> None:
        if fault.lost_connection:
            raise RemoteReadError(fault.reason)

    by_shard: dict[str, set[int]] = {}
    for shard, index in wanted:
        by_shard.setdefault(shard, set()).add(index)
    for shard, indices in by_shard.items():
        last = max(indices)
        for sample in iter_source(shard, on_fault, max_member_bytes, retry):
            if sample.index in indices:
                yield sample
            if sample.index >= last:
                break


def batched(items: Iterable, size: int) -> Iterator[list]:
    """`items` in lists of `size` (the last shorter)."""
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
