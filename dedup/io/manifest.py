"""manifest.parquet's schema: one row per input sample, what was decided about it and why; and the rows of
samples no duplicate group decided about (kept with no match, or unreadable)."""

from __future__ import annotations

import pyarrow as pa

from dedup.io.samples import IN_INPUT_ORDER, sample_id, sample_id_fields

MANIFEST_SCHEMA = pa.schema(
    [
        *sample_id_fields(),
        ("status", pa.string()),  # kept | dropped | unreadable
        ("reason", pa.string()),
        ("group_id", pa.int64()),
        ("group_size", pa.int64()),
        ("rank", pa.int32()),  # position in the group under the keep rule, 0 = best
        ("kept_key", pa.string()),  # the group's best sample
        ("kept_shard", pa.string()),
        ("match", pa.string()),  # signal of the sample's nearest duplicate
        ("relation", pa.string()),  # what kind of match that pair is (dedup/search/relations.py)
        ("similarity", pa.float32()),
        ("caption_change", pa.string()),  # select.diversify_captions: what changed the caption written
        ("new_caption", pa.string()),  # the caption write gives the sample; null: its own
        ("person_label", pa.string()),  # what a person's label (dedup review) said about the sample's pairs
    ]
)


def ungrouped_rows(samples: pa.Table, status: str, reasons: pa.Array | pa.ChunkedArray) -> pa.Table:
    """Manifest rows of samples no duplicate group decided about, their group columns null."""
    rows = len(samples)
    undecided = [name for name in MANIFEST_SCHEMA.names if name not in (*IN_INPUT_ORDER, "status", "reason")]
    return pa.table(
        {
            **sample_id(samples),
            "status": pa.array([status] * rows, pa.string()),
            "reason": reasons,
            **{name: pa.nulls(rows, MANIFEST_SCHEMA.field(name).type) for name in undecided},
        },
        schema=MANIFEST_SCHEMA,
    )


def unreadable_rows(failures: pa.Table) -> pa.Table:
    return ungrouped_rows(failures, "unreadable", failures["reason"])
