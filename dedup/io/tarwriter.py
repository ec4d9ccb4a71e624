"""Samples into a WebDataset tar: one member per field, `KEY.EXTENSION`, fields in sorted order, fixed owner and
time so the same samples give the same bytes. The tar webdataset's TarWriter writes (tests hold it byte for
byte), without importing webdataset, whose package import pulls in torch (seconds a process)."""

from __future__ import annotations

import io
import tarfile
from typing import IO


class SampleTarWriter:
    def __init__(self, stream: IO[bytes], mtime: float, owner: str):
        self.tar = tarfile.open(fileobj=stream, mode="w|")
        self.mtime = mtime
        self.owner = owner

    def write(self, key: str, files: dict[str, bytes]) -> int:
        """Append one sample; returns its payload bytes."""
        total = 0
        for extension in sorted(files):
            data = files[extension]
            member = tarfile.TarInfo(f"{key}.{extension}")
            member.size, member.mtime, member.mode = len(data), self.mtime, 0o444
            member.uname = member.gname = self.owner
            self.tar.addfile(member, io.BytesIO(data))
            total += len(data)
        return total

    def close(self) -> None:
        self.tar.close()
