"""The embeddings store, in clip-retrieval's layout so published LAION embeddings can be read as they are.

    ROOT/embed.json                      the embedder spec and the shard list (ours only)
    ROOT/img_emb/img_emb_N.npy           float32 (n, dim), L2-normalised, row i <-> metadata row i
    ROOT/metadata/metadata_N.parquet     key, shard, shard_index, sample_index, sha256, phash, width, height, caption
    ROOT/txt_emb/txt_emb_N.npy           caption embeddings, when asked for
    ROOT/regions/regions_N.npy           float16 (n, R, dim): R crops of each image, when embed.regions asks (ours)
    ROOT/regions/mirrors_N.npy           float16 (n, dim): each image mirrored, beside its regions (ours)
    ROOT/failures/failures_N.parquet     samples that could not be embedded, with the reason (ours only)
    ROOT/stats/stats_N.json              the completion marker of part N, written last (ours only)

Part N holds the samples of input shard N. A folder written by clip-retrieval has no stats or failures;
its metadata columns are mapped onto ours (`image_path` or `url` becomes the key).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import pyarrow as pa

from dedup.errors import InputError
from dedup.io.atomic import read_json, read_parquet, write_json, write_npy, write_parquet
from dedup.io.samples import KEY_FIRST, sample_id_fields

METADATA_SCHEMA = pa.schema(
    [
        *sample_id_fields(KEY_FIRST),
        ("sha256", pa.string()),
        ("phash", pa.uint64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("caption", pa.string()),
    ]
)
FAILURE_SCHEMA = pa.schema([*sample_id_fields(KEY_FIRST), ("reason", pa.string())])
PART_NUMBER = re.compile(r"_(\d+)\.(?:npy|parquet|json)$")


def _part_number(path: Path) -> int:
    match = PART_NUMBER.search(path.name)
    return int(match.group(1)) if match else -1


@dataclass
class LoadedStore:
    metadata: pa.Table  # one row per embedded sample, in part order
    embeddings: np.ndarray  # float32 (rows, dim); a RowStack, read like one, when the store exceeds memory
    failures: pa.Table
    spec: dict


class EmbeddingStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- paths
    def emb_path(self, part: int) -> Path:
        return self.root / "img_emb" / f"img_emb_{part}.npy"

    def txt_path(self, part: int) -> Path:
        return self.root / "txt_emb" / f"txt_emb_{part}.npy"

    def metadata_path(self, part: int) -> Path:
        return self.root / "metadata" / f"metadata_{part}.parquet"

    def failures_path(self, part: int) -> Path:
        return self.root / "failures" / f"failures_{part}.parquet"

    def stats_path(self, part: int) -> Path:
        return self.root / "stats" / f"stats_{part}.json"

    def spans_path(self, part: int) -> Path:
        """(sample index, start, end, payload bytes) of each embedded sample in its plain tar shard (start and
        end -1 where a folder entry interrupts it): `write` copies these ranges without scanning the shard."""
        return self.root / "spans" / f"spans_{part}.npy"

    def pdq_path(self, part: int) -> Path:
        """uint8 (rows, 8, 32): each embedded sample's PDQ hash and its dihedral variants."""
        return self.root / "pdq" / f"pdq_{part}.npy"

    def regions_path(self, part: int) -> Path:
        return self.root / "regions" / f"regions_{part}.npy"

    def mirrors_path(self, part: int) -> Path:
        return self.root / "regions" / f"mirrors_{part}.npy"

    def thumbs_path(self, part: int) -> Path:
        """uint8 (rows, 16, 16, 3): each embedded sample's thumbnail, for the low-detail check."""
        return self.root / "thumbs" / f"thumbs_{part}.npy"

    @property
    def spec_path(self) -> Path:
        return self.root / "embed.json"

    # -- writing
    def write_part(
        self,
        part: int,
        embeddings: np.ndarray,
        metadata: pa.Table,
        failures: pa.Table,
        stats: dict,
        text_embeddings: np.ndarray | None = None,
        spans: np.ndarray | None = None,
        pdq: np.ndarray | None = None,
        thumbs: np.ndarray | None = None,
        regions: np.ndarray | None = None,
        mirrors: np.ndarray | None = None,
    ) -> None:
        """Write one part; the stats file goes last, so its presence means the part is complete."""
        write_npy(self.emb_path(part), np.ascontiguousarray(embeddings, dtype=np.float32))
        if pdq is not None:
            write_npy(self.pdq_path(part), pdq)
        if thumbs is not None:
            write_npy(self.thumbs_path(part), thumbs)
        if spans is not None:
            write_npy(self.spans_path(part), spans)
        if regions is not None:
            write_npy(self.regions_path(part), regions)
        if mirrors is not None:
            write_npy(self.mirrors_path(part), mirrors)
        if text_embeddings is not None:
            write_npy(self.txt_path(part), np.ascontiguousarray(text_embeddings, dtype=np.float32))
        write_parquet(self.metadata_path(part), metadata)
        write_parquet(self.failures_path(part), failures)
        write_json(self.stats_path(part), stats)

    def completed_parts(self) -> set[int]:
        return {_part_number(p) for p in (self.root / "stats").glob("stats_*.json")}

    def part_stats(self, part: int) -> dict:
        return read_json(self.stats_path(part))

    def read_spec(self) -> dict | None:
        return read_json(self.spec_path) if self.spec_path.exists() else None

    def write_spec(self, spec: dict) -> None:
        write_json(self.spec_path, spec)

    # -- reading
    def parts(self) -> list[int]:
        metadata_parts = {_part_number(p) for p in (self.root / "metadata").glob("metadata_*.parquet")}
        embedding_parts = {_part_number(p) for p in (self.root / "img_emb").glob("img_emb_*.npy")}
        ours = self.spec_path.exists()
        parts = self.completed_parts() if ours else metadata_parts & embedding_parts
        return sorted(parts)

    def load(self, mmap: bool = True, max_in_memory_bytes: float | None = None) -> LoadedStore:
        """The whole store. Embeddings come as one float32 array in memory, unless that would take more than
        `max_in_memory_bytes`: then they stay memory-mapped on disk (a `RowStack`) and are read only where
        indexed, so a store larger than memory can be searched part by part."""
        if not self.root.exists():
            raise InputError(f"embeddings folder {str(self.root)!r} does not exist; run `dedup embed` first")
        parts = self.parts()
        if not parts:
            raise InputError(
                f"embeddings folder {str(self.root)!r} holds no complete part "
                "(expected img_emb/img_emb_N.npy with metadata/metadata_N.parquet); run `dedup embed` first"
            )
        spec = self.read_spec() or {"embedder": "external", "layout": "clip-retrieval"}
        tables: list[pa.Table] = []
        arrays: list[np.ndarray] = []
        failures: list[pa.Table] = []
        for part in parts:
            array = np.load(self.emb_path(part), mmap_mode="r" if mmap else None)
            table = normalise_metadata(read_parquet(self.metadata_path(part)), part)
            if len(table) != len(array):
                raise InputError(f"part {part} of {self.root}: {len(table)} metadata rows but {len(array)} embeddings")
            if arrays and array.shape[1] != arrays[0].shape[1]:
                raise InputError(
                    f"part {part} of {self.root} has {array.shape[1]}-d embeddings, others {arrays[0].shape[1]}-d"
                )
            tables.append(table)
            arrays.append(array)
            if self.failures_path(part).exists():
                failures.append(read_parquet(self.failures_path(part)).cast(FAILURE_SCHEMA))
        stack = RowStack(arrays)
        fits = max_in_memory_bytes is None or stack.shape[0] * stack.shape[1] * 4 <= max_in_memory_bytes
        embeddings = stack.in_memory() if fits else cast(np.ndarray, stack)  # reads rows as an array does
        return LoadedStore(
            metadata=pa.concat_tables(tables),
            embeddings=embeddings,
            failures=pa.concat_tables(failures) if failures else FAILURE_SCHEMA.empty_table(),
            spec=spec,
        )

    def pdq_hashes(self) -> np.ndarray | None:
        """uint8 (rows, 8, 32), in the rows' order of `load`, where every part has PDQ hashes; None otherwise
        (stores of older runs, clip-retrieval's). Read only by a search that uses them."""
        return self._rows_of(self.pdq_path)

    def thumbnails(self) -> np.ndarray | None:
        """uint8 (rows, 16, 16, 3), as `pdq_hashes`: what the low-detail check compares."""
        return self._rows_of(self.thumbs_path)

    def region_vectors(self) -> np.ndarray | None:
        """float16 (rows, R, dim), as `pdq_hashes`: the crops embed.regions asked for (dedup/search/regions.py)."""
        return self._rows_of(self.regions_path)

    def mirror_vectors(self) -> np.ndarray | None:
        """float16 (rows, dim), as `pdq_hashes`: each image mirrored, embedded beside its regions."""
        return self._rows_of(self.mirrors_path)

    def _rows_of(self, path_of) -> np.ndarray | None:
        files = [path_of(part) for part in self.parts()]
        if not files or not all(path.exists() for path in files):
            return None
        return np.concatenate([np.load(path) for path in files])


class RowStack:
    """The rows of several memory-mapped parts as one read-only float32 matrix that reads only the rows
    asked for (a slice, an index array or a mask): what `find` needs to search a store larger than memory."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts
        self.offsets = np.cumsum([0, *(len(p) for p in parts)])
        self.shape = (int(self.offsets[-1]), parts[0].shape[1])
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, start: int, stop: int | None = None) -> RowStack:
        """Rows start..stop as a RowStack of their own: views of the parts, nothing read."""
        stop = len(self) if stop is None else stop
        pieces = [
            part[max(start - first, 0) : min(stop - first, len(part))]
            for part, first in zip(self.parts, self.offsets[:-1].tolist())
            if max(start - first, 0) < min(stop - first, len(part))
        ]
        return RowStack(pieces or [self.parts[0][:0]])

    def in_memory(self) -> np.ndarray:
        if len(self.parts) == 1:
            return np.asarray(self.parts[0], dtype=np.float32)
        return np.concatenate(self.parts).astype(np.float32, copy=False)

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            index = np.arange(*index.indices(len(self)))
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        if len(self.parts) == 1:
            return np.asarray(self.parts[0][index], dtype=np.float32)
        part_of = np.searchsorted(self.offsets, index, side="right") - 1
        out = np.empty((len(index), self.shape[1]), dtype=np.float32)
        for part in np.unique(part_of):
            chosen = part_of == part
            out[chosen] = self.parts[part][index[chosen] - self.offsets[part]]
        return out


def normalise_metadata(table: pa.Table, part: int) -> pa.Table:
    """Map a metadata table (ours or clip-retrieval's) onto METADATA_SCHEMA."""
    rows = len(table)
    names = set(table.column_names)
    columns = {}
    for name in ("image_path", "url", "key"):
        if name in names:
            columns["key"] = table[name].cast(pa.string())
    columns.setdefault("key", pa.array([f"{part}:{i}" for i in range(rows)], pa.string()))
    defaults = {
        "shard": pa.nulls(rows, pa.string()),
        "shard_index": pa.array(np.full(rows, part, dtype=np.int32)),
        "sample_index": pa.array(np.arange(rows, dtype=np.int32)),
        "sha256": pa.nulls(rows, pa.string()),
        "phash": pa.nulls(rows, pa.uint64()),
        "width": pa.nulls(rows, pa.int32()),
        "height": pa.nulls(rows, pa.int32()),
        "caption": pa.nulls(rows, pa.string()),
    }
    for name, default in defaults.items():
        columns[name] = table[name].cast(METADATA_SCHEMA.field(name).type) if name in names else default
    return pa.table([columns[f.name] for f in METADATA_SCHEMA], schema=METADATA_SCHEMA)
