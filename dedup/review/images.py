"""A sample's thumbnail, read on demand from its input shard: a plain local tar by the byte range of the sample
(the same scan `write` uses), any other shard by streaming it up to the sample."""

from __future__ import annotations

import io
import tarfile
import threading
from collections import OrderedDict

from PIL import Image

from dedup.io.imaging import UnreadableImage, open_image
from dedup.io.reader import iter_selected, member_key
from dedup.io.tarspans import is_plain_local_tar, span_table


def sample_files_in_range(path: str, start: int, end: int) -> dict[str, bytes]:
    """The files of the sample whose tar members lie in bytes [start, end) of a plain tar."""
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read(end - start)
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        for member in archive:
            if not member.isfile():
                continue
            _, extension = member_key(member.name)
            extracted = archive.extractfile(member)
            if extension is not None and extracted is not None:
                files[extension] = extracted.read()
    return files


def sample_files(shard: str, sample_index: int, span: tuple[int, int] | None = None) -> dict[str, bytes]:
    """The sample's files: by `span` (its byte range, as embed recorded it) where given, else by scanning a plain
    local tar's headers once, else by streaming the shard up to the sample."""
    if span is not None and is_plain_local_tar(shard):
        return sample_files_in_range(shard, *span)
    if is_plain_local_tar(shard):
        spans = span_table(shard)
        if sample_index < len(spans.starts) and spans.contiguous[sample_index]:
            return sample_files_in_range(shard, int(spans.starts[sample_index]), int(spans.ends[sample_index]))
    for sample in iter_selected([(shard, sample_index)]):
        return sample.files
    raise UnreadableImage(f"{shard} has no sample {sample_index} (the shard changed since the run?)")


def sample_image(shard: str, sample_index: int, span: tuple[int, int] | None = None) -> Image.Image:
    """The sample's image at full size (sample_files finds it)."""
    image, _ = open_image(sample_files(shard, sample_index, span))
    return image


def jpeg_thumbnail(files: dict[str, bytes], size: int) -> bytes:
    image, _ = open_image(files)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=82)
    return buffer.getvalue()


class Thumbnails:
    """JPEG thumbnails by (shard, sample index), the most recent `capacity` kept in memory."""

    def __init__(self, size: int = 192, capacity: int = 2048):
        self.size, self.capacity = size, capacity
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, shard: str, sample_index: int, span: tuple[int, int] | None = None) -> bytes:
        """The thumbnail; UnreadableImage (or OSError) when the shard or image cannot be read."""
        place = (shard, sample_index)
        with self._lock:
            if place in self._cache:
                self._cache.move_to_end(place)
                return self._cache[place]
        jpeg = jpeg_thumbnail(sample_files(shard, sample_index, span), self.size)
        with self._lock:
            self._cache[place] = jpeg
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return jpeg
