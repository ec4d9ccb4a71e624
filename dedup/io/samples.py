"""A sample's identity, the same in every table: its input shard (path, and number in the run's sorted input
list), its position in that shard, and its key."""

from __future__ import annotations

import pyarrow as pa

SAMPLE_ID_TYPES: dict[str, pa.DataType] = {
    "shard": pa.string(),
    "shard_index": pa.int32(),
    "sample_index": pa.int32(),
    "key": pa.string(),
}
IN_INPUT_ORDER = ("shard", "shard_index", "sample_index", "key")  # the manifest's order
KEY_FIRST = ("key", "shard", "shard_index", "sample_index")  # the store's: clip-retrieval's metadata leads with the key


def sample_id_fields(order: tuple[str, ...] = IN_INPUT_ORDER) -> list[tuple[str, pa.DataType]]:
    """The identity's columns and types, for a table schema."""
    return [(name, SAMPLE_ID_TYPES[name]) for name in order]


def sample_id(table: pa.Table, order: tuple[str, ...] = IN_INPUT_ORDER) -> dict[str, pa.ChunkedArray]:
    """The identity's columns of `table`, to start another table's columns with."""
    return {name: table[name] for name in order}
