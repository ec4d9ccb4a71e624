"""Write files so that a reader never sees a partial file under its final name.

Everything is written to a temporary name in the same folder, flushed and fsynced, then renamed.
A rename within one filesystem is atomic, so after a crash a file either exists complete or not at all.
`write` can leave its shards' fsyncs to the OS (`write.sync = "none"`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TMP_PREFIX = ".tmp-"
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", durable: bool = True) -> Iterator[IO]:
    """Open a temporary file beside `path`; on success rename it to `path`. `durable`: fsync the file before
    the rename and the folder after it; without, the OS writes them back when it will."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are shared data
        os.replace(tmp_name, path)
        if durable:
            _fsync(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, payload: Any, durable: bool = True) -> None:
    with atomic_open(path, "w", durable=durable) as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as handle:
        return json.load(handle)


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file as a table (`columns`: just those of them the file has). `pq.read_table` would import
    pyarrow.dataset, and with it pandas: half a second of every command's start-up."""
    with pq.ParquetFile(path) as parquet:
        present = None if columns is None else [c for c in columns if c in parquet.schema_arrow.names]
        return parquet.read(columns=present)


def write_parquet(path: str | os.PathLike, table: pa.Table) -> None:
    with atomic_open(path, "wb") as handle:
        pq.write_table(table, handle)


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as handle:
        np.save(handle, array)


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete temporary files a killed run left behind; they are never valid outputs."""
    folder = Path(folder)
    if not folder.exists():
        return 0
    stale = [p for p in folder.rglob(TMP_PREFIX + "*") if p.is_file()]
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return len(stale)
