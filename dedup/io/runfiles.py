"""The tables a run folder holds between stages, read back with an error that names the stage to run first.

Apart from the stages, so that a stage reads another's output without importing its code (`find` imports
faiss, a tenth of a second of every `dedup write`)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from dedup.errors import InputError
from dedup.io.atomic import read_parquet


def read_stage_table(path: Path, stage: str, columns: list[str] | None = None) -> pa.Table:
    if not path.exists():
        raise InputError(f"{path} does not exist; run `dedup {stage}` first")
    return read_parquet(path, columns)


def load_groups(run_dir: str | Path) -> pa.Table:
    return read_stage_table(Path(run_dir) / "groups.parquet", "find")


def load_manifest(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """manifest.parquet of a run folder, or that file itself; `columns`: just those the manifest has of them."""
    path = Path(path)
    return read_stage_table(path / "manifest.parquet" if path.is_dir() else path, "select", columns)
