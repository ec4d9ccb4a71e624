"""Turn what a user types (paths, folders, brace patterns, globs, fsspec URLs) into a sorted list of shard URLs."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, TYPE_CHECKING

import braceexpand

from dedup.errors import InputError

if TYPE_CHECKING:
    from dedup.io.remote import RetryPolicy

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
# A folder of more images than this is read as parts of this many, so an engine spreads it over its workers.
FOLDER_PART_IMAGES = 1000
_FOLDER_PART = re.compile(r"^(?P<folder>.+)#images=(?P<start>\d+):(?P<stop>\d+),of=(?P<total>\d+)$")


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def _strip_file_scheme(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def _is_shard_name(name: str) -> bool:
    return name.endswith(SHARD_SUFFIXES)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def image_files(folder: str | Path) -> list[Path]:
    """Every image file under a folder, recursively, in a stable order."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_image_name(p.name))


@dataclass(frozen=True)
class FolderPart:
    """Images [start, stop) of a folder's sorted listing of `total` images: source `FOLDER#images=START:STOP,of=TOTAL`."""

    folder: str
    start: int
    stop: int
    total: int

    @property
    def url(self) -> str:
        return f"{self.folder}#images={self.start}:{self.stop},of={self.total}"

    def images(self, fresh: bool = False) -> list[Path]:
        """The part's image files; InputError when the folder no longer holds `total` images (it changed since
        its parts were made: their places would shift). `fresh`: listed now, not as this process listed it before
        (a fingerprint must see the folder as it is)."""
        if fresh:
            _listing.cache_clear()
        listing = _listing(self.folder)
        if len(listing) != self.total:  # listed before it changed: list it again
            _listing.cache_clear()
            listing = _listing(self.folder)
        if len(listing) != self.total:
            raise InputError(
                f"folder {self.folder} holds {len(listing)} images, {self.total} when its parts were made; "
                "it changed during the run: rerun in a new run folder"
            )
        return list(listing[self.start : self.stop])


def folder_part(url: str) -> FolderPart | None:
    """The folder part a source URL names, or None."""
    match = _FOLDER_PART.match(url)
    if not match or not os.path.isdir(match["folder"]):
        return None
    return FolderPart(match["folder"], int(match["start"]), int(match["stop"]), int(match["total"]))


@lru_cache(maxsize=4)
def _listing(folder: str) -> tuple[Path, ...]:
    # every part of a folder lists it: once a process, rechecked against the total each part carries
    return tuple(image_files(folder))


def folder_sources(folder: str, images: int) -> list[str]:
    """A folder of images as sources: itself, or parts of FOLDER_PART_IMAGES images when it holds more."""
    if images <= FOLDER_PART_IMAGES:
        return [folder]
    return [
        FolderPart(folder, start, min(start + FOLDER_PART_IMAGES, images), images).url
        for start in range(0, images, FOLDER_PART_IMAGES)
    ]


def local_root(url: str) -> str:
    """The file or folder a local source reads: a folder part's folder, else the path itself."""
    part = folder_part(url)
    return part.folder if part else _strip_file_scheme(url)


def _expand_one(spec: str) -> list[str]:
    if is_remote(spec):
        if any(ch in spec for ch in "*?["):
            import fsspec  # remote inputs only: local commands do not pay for its import

            fs, _, paths = fsspec.get_fs_token_paths(spec)
            protocol = spec.split("://", 1)[0]
            return sorted(f"{protocol}://{p}" if "://" not in p else p for p in paths)
        return [spec]
    path = _strip_file_scheme(spec)
    if folder_part(path):
        return [path]
    if os.path.isdir(path):
        found = sorted(str(p) for p in Path(path).iterdir() if p.is_file() and _is_shard_name(p.name))
        images = [] if found else image_files(path)
        if images:
            return folder_sources(path, len(images))  # each image is a sample
        if not found:
            raise InputError(
                f"folder {path!r} holds no shards (looked for {', '.join(SHARD_SUFFIXES)}) and no images; "
                "give shard files, a folder of them, a folder of images, or a pattern such as data/{00000..00009}.tar"
            )
        return found
    if any(ch in path for ch in "*?["):
        found = sorted(glob.glob(path))
        if not found:
            raise InputError(f"pattern {path!r} matches no file; check the path and the pattern")
        return found
    if not os.path.exists(path):
        raise InputError(f"shard {path!r} does not exist; check the path (relative paths start at {os.getcwd()})")
    return [path]


def expand_shards(specs: str | Iterable[str]) -> list[str]:
    """Expand shard specifications into unique shard URLs, in the order given (each spec sorted)."""
    if isinstance(specs, str):
        specs = [specs]
    urls: list[str] = []
    for spec in specs:
        for expanded in braceexpand.braceexpand(str(spec)):
            urls.extend(_expand_one(expanded))
    if not urls:
        raise InputError("no input shards were given; pass shard paths, folders, patterns or URLs")
    return list(dict.fromkeys(urls))  # duplicates dropped, first place kept


def open_shard(url: str, retry: RetryPolicy | None = None) -> IO[bytes]:
    """A readable binary stream for a local path or any fsspec URL (read through faults: dedup/io/remote.py)."""
    if is_remote(url):
        from dedup.io.remote import DEFAULT_POLICY, open_remote

        return open_remote(url, retry or DEFAULT_POLICY)
    return open(_strip_file_scheme(url), "rb")


@dataclass(frozen=True)
class Fingerprint:
    """What we record about a shard at `embed` to detect that it changed before `write`."""

    size: int | None
    mtime: float | None
    etag: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def fingerprint(url: str, retry: RetryPolicy | None = None) -> Fingerprint:
    if is_remote(url):
        from dedup.io.remote import DEFAULT_POLICY, filesystem, with_retries

        policy = retry or DEFAULT_POLICY
        fs, path = filesystem(url, policy)
        info = with_retries(lambda: fs.info(path), policy, f"{url}: cannot read its size and date")
        etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
        mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
        return Fingerprint(size=info.get("size"), mtime=_as_timestamp(mtime), etag=str(etag) if etag else None)
    path = _strip_file_scheme(url)
    part = folder_part(path)
    if part or os.path.isdir(path):
        stats = [p.stat() for p in (part.images(fresh=True) if part else image_files(path))]
        return Fingerprint(size=sum(s.st_size for s in stats), mtime=max((s.st_mtime for s in stats), default=0.0))
    stat = os.stat(path)
    return Fingerprint(size=stat.st_size, mtime=stat.st_mtime)


def _as_timestamp(value) -> float | None:
    if value is None:
        return None
    if hasattr(value, "timestamp"):
        return value.timestamp()
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
