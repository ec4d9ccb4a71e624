"""summary.json: what happened to every input sample, counted by decision and reason, and whether the counts
reconcile (input = kept + dropped + unreadable, written = kept)."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc


def reason_class(reason: str) -> str:
    lowered = reason.lower()
    for needle, label in (
        ("no image file", "no image"),
        ("decompression bomb", "decompression bomb"),
        ("over the limit", "too large"),
        ("cannot be decoded", "corrupt image"),
        ("is empty", "empty image"),
        ("shard ended", "truncated shard"),
        ("absolute path", "unsafe member name"),
        ("'..'", "unsafe member name"),
        ("is a link", "link member"),
        ("not a regular file", "special member"),
        ("no extension", "member without extension"),
        ("reserved", "reserved member name"),
    ):
        if needle in lowered:
            return label
    return "other"


def _count_rows(table: pa.Table, columns: list[str]) -> list[tuple]:
    """(value of each column..., rows) for each distinct combination: Python work per distinct value, not per row."""
    counted = table.group_by(columns).aggregate([([], "count_all")]).to_pydict()
    return list(zip(*(counted[c] for c in columns), counted["count_all"]))


def summarize(manifest: pa.Table, shard_stats: list[dict], unreadable_shards: list[dict], removed: int = 0) -> dict:
    """`removed`: samples in `shard_stats`' shards that a later increment no longer keeps (listed in
    removals.json); they do not count as written."""
    counts = Counter(dict(_count_rows(manifest, ["status"])))
    dropped = manifest.filter(pc.equal(manifest["status"], "dropped"))
    if "reference_match" not in dropped.column_names:
        dropped = dropped.append_column("reference_match", pa.nulls(len(dropped), pa.string()))
    dropped_by: Counter[str] = Counter()
    for match, reference, rows in _count_rows(dropped, ["match", "reference_match"]):
        dropped_by[f"reference match ({reference})" if reference else f"duplicate ({match})"] += rows
    unreadable_by: Counter[str] = Counter()
    for reason, rows in _count_rows(manifest.filter(pc.equal(manifest["status"], "unreadable")), ["reason"]):
        unreadable_by[reason_class(reason)] += rows
    written = sum(s["samples"] for s in shard_stats) - removed
    input_samples = len(manifest)
    summary = {
        "input_samples": input_samples,
        "kept": counts["kept"],
        "dropped": counts["dropped"],
        "dropped_by_reason": dict(sorted(dropped_by.items())),
        "unreadable": counts["unreadable"],
        "unreadable_by_reason": dict(sorted(unreadable_by.items())),
        "unreadable_shards": unreadable_shards,
        "written_samples": written,
        "output_shards": [s["shard"] for s in shard_stats],
        "output_bytes": sum(s["tar_bytes"] for s in shard_stats),
        "renamed_keys": [item for s in shard_stats for item in s.get("renamed_keys", [])],
    }
    if removed:
        summary["removed_from_earlier_output"] = removed
    if "relation" in dropped.column_names:  # what kind of match each dropped sample was to its nearest duplicate
        by_relation: Counter[str] = Counter()
        for name, rows in _count_rows(dropped, ["relation"]):
            by_relation[name or "unknown"] += rows
        summary["dropped_by_relation"] = dict(sorted(by_relation.items()))
    if "person_label" in manifest.column_names:  # decisions a person's labels (dedup review) touched, by status
        touched = manifest.filter(pc.is_valid(manifest["person_label"]))
        summary["decided_with_person_labels"] = dict(sorted(Counter(touched["status"].to_pylist()).items()))
    summary["reconciles"] = (
        input_samples == counts["kept"] + counts["dropped"] + counts["unreadable"]
        and written == counts["kept"]
        and sum(dropped_by.values()) == counts["dropped"]
        and sum(unreadable_by.values()) == counts["unreadable"]
        and ("dropped_by_relation" not in summary or sum(summary["dropped_by_relation"].values()) == counts["dropped"])
    )
    return summary
