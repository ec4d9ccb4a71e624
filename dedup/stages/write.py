"""`write`: stream the input shards again and copy the kept samples into new shards, byte for byte.

The kept samples, in input order, are cut into output shards of `samples_per_shard`. Each output shard
is one unit of work: it reads only the input shards it needs (stopping as soon as it has its samples),
writes `PREFIX-NNNNN.tar` under a temporary name, renames it, then writes `PREFIX-NNNNN_stats.json`
as its completion marker. A rerun skips shards whose marker matches the plan. `summary.json` comes last.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dedup import tarspans
from dedup.atomic import atomic_open, read_json, remove_stale_temporaries, write_json
from dedup.engine import LocalEngine, Unit, run_units
from dedup.errors import DedupError, InputError, SettingsError
from dedup.progress import SILENT, Reporter
from dedup.reader import DEFAULT_MAX_MEMBER_BYTES, iter_selected
from dedup.settings import WriteSettings
from dedup.sources import fingerprint, is_remote
from dedup.stages.select import load_manifest
from dedup.store import EmbeddingStore

FIXED_MTIME = 0  # identical bytes on every run, so an interrupted and resumed run equals a clean one


def plan_output(manifest: pa.Table, samples_per_shard: int) -> list[list[dict]]:
    kept = manifest.filter(pc.equal(manifest["status"], "kept"))
    kept = kept.take(pc.sort_indices(kept, [("shard_index", "ascending"), ("sample_index", "ascending")]))
    rows = kept.select(["shard", "shard_index", "sample_index", "key"]).to_pylist()
    return [rows[i:i + samples_per_shard] for i in range(0, len(rows), samples_per_shard)]


def plan_digest(rows: list[dict]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(f"{row['shard']}\0{row['sample_index']}\0{row['key']}\n".encode())
    return digest.hexdigest()


def shard_name(prefix: str, number: int) -> str:
    return f"{prefix}-{number:05d}.tar"


def changed_since_embed(shard: str, index: int, now: str, was: str) -> InputError:
    return InputError(f"shard {shard} changed since embed: sample {index} is now {now!r}, was {was!r}; "
                      "rerun from `dedup embed` with a new run folder")


def raw_spans(rows: list[dict], store_dir: str | None = None) -> list[tuple[str, tarspans.SampleSpan]] | None:
    """Each row's byte range in its input shard, or None when this output shard must be written member by
    member (gzip or remote input, a key repeated side by side, a sample interrupted by a folder entry).
    The ranges embed recorded are used where the store has them; otherwise the shard's headers are scanned."""
    keys = [row["key"] for row in rows]
    parts = {row["shard"]: row["shard_index"] for row in rows}
    if any(a == b for a, b in zip(keys, keys[1:])) or not all(tarspans.is_plain_local_tar(shard) for shard in parts):
        return None
    recorded = {shard: recorded_spans(store_dir, part) for shard, part in parts.items()} if store_dir else {}
    chosen = []
    for row in rows:
        shard, index = row["shard"], row["sample_index"]
        if recorded.get(shard) is not None:
            if index not in recorded[shard]:
                raise changed_since_embed(shard, index, "not recorded", row["key"])
            start, end, payload = recorded[shard][index]
            # the key is embed's; copy_spans checks it against the shard's header once per range it copies
            span = tarspans.SampleSpan(row["key"], start, end, payload, contiguous=start >= 0)
        else:
            spans = tarspans.sample_spans(shard)
            if index >= len(spans) or spans[index].key != row["key"]:
                raise changed_since_embed(shard, index, spans[index].key if index < len(spans) else "nothing", row["key"])
            span = spans[index]
        if not span.contiguous:
            return None
        chosen.append((shard, span))
    return chosen


@lru_cache(maxsize=64)
def _recorded_spans(path: str, size: int, mtime_ns: int) -> dict[int, tuple[int, int, int]]:
    return {index: (start, end, payload) for index, start, end, payload in np.load(path).tolist()}


def recorded_spans(store_dir: str, part: int) -> dict[int, tuple[int, int, int]] | None:
    """sample index -> (start, end, payload bytes) as embed recorded them for one part (a plain local tar);
    None for stores without them (older runs, clip-retrieval metadata, other sources)."""
    path = EmbeddingStore(store_dir).spans_path(part)
    if not path.exists():
        return None
    stat = path.stat()
    return _recorded_spans(str(path), stat.st_size, stat.st_mtime_ns)


def coalesced_ranges(spans: list[tuple[str, "tarspans.SampleSpan"]]) -> list[tuple[str, int, int, str]]:
    """(shard, start, end, first sample's key) with samples that follow each other in their input merged into
    one range: a run of kept samples is one copy_file_range call, not one per sample."""
    ranges: list[list] = []
    for shard, span in spans:
        if ranges and ranges[-1][0] == shard and ranges[-1][2] == span.start:
            ranges[-1][2] = span.end
        else:
            ranges.append([shard, span.start, span.end, span.key])
    return [tuple(r) for r in ranges]


def copy_spans(path: Path, spans: list[tuple[str, "tarspans.SampleSpan"]]) -> int:
    size = 0
    with atomic_open(path, "wb") as handle:
        handle.flush()
        target = handle.fileno()
        sources: dict[str, int] = {}
        try:
            for shard, start, end, first_key in coalesced_ranges(spans):
                if shard not in sources:
                    sources[shard] = os.open(shard, os.O_RDONLY)
                found = tarspans.key_at(shard, sources[shard], start)
                if found != first_key:  # its size and time matched embed's, but its bytes moved
                    raise InputError(f"shard {shard} changed since embed: at byte {start} it holds {found!r}, embed "
                                     f"saw {first_key!r}; rerun from `dedup embed` with a new run folder")
                tarspans.copy_range(sources[shard], target, start, end - start)
                size += end - start
        finally:
            for fd in sources.values():
                os.close(fd)
        os.write(target, tarspans.end_of_archive(size))
    return len(spans)


def rewrite_members(path: Path, rows: list[dict], max_member_bytes: int) -> tuple[int, int, list[dict]]:
    import webdataset as wds  # imports torch: seconds, paid only on this path

    expected = {(row["shard"], row["sample_index"]): row["key"] for row in rows}
    written, payload_bytes, previous_key, renamed = set(), 0, None, []
    with atomic_open(path, "wb") as handle:
        writer = wds.TarWriter(handle, encoder=False, mtime=FIXED_MTIME, user="dedup", group="dedup")
        for sample in iter_selected(expected, max_member_bytes):
            was = expected[(sample.shard, sample.index)]
            if sample.key != was:
                raise changed_since_embed(sample.shard, sample.index, sample.key, was)
            key = sample.key
            if key == previous_key:
                # two samples with one key side by side would be read back as one sample
                key = f"{sample.key}_dup-{Path(sample.shard).name.split('.')[0]}-{sample.index}"
                renamed.append({"shard": sample.shard, "sample_index": sample.index, "key": sample.key, "written_as": key})
            payload_bytes += writer.write({"__key__": key, **sample.files})
            previous_key = key
            written.add((sample.shard, sample.index))
        missing = [place for place in expected if place not in written]
        if missing:
            shard = missing[0][0]
            gone = sum(1 for place in missing if place[0] == shard)
            raise InputError(f"shard {shard} changed since embed: {gone} kept samples are gone")
        writer.close()
    return len(written), payload_bytes, renamed


def write_output_shard(number: int, rows: list[dict], out_dir: str, prefix: str, max_member_bytes: int,
                       store_dir: str | None = None) -> dict:
    """Copy the samples listed in `rows` (in order) into one output shard: as raw byte ranges when every
    input is a plain local tar and no key repeats side by side, else member by member."""
    started = time.perf_counter()
    path = Path(out_dir) / shard_name(prefix, number)
    spans = raw_spans(rows, store_dir)
    if spans is not None:
        written, payload_bytes, renamed = copy_spans(path, spans), sum(span.payload for _, span in spans), []
    else:
        written, payload_bytes, renamed = rewrite_members(path, rows, max_member_bytes)
    stats = {
        "shard": path.name,
        "samples": written,
        "payload_bytes": payload_bytes,
        "tar_bytes": path.stat().st_size,
        "plan_digest": plan_digest(rows),
        "renamed_keys": renamed,
        "inputs": sorted({row["shard"] for row in rows}),
        "copy": "byte ranges" if spans is not None else "members",
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json(Path(out_dir) / f"{prefix}-{number:05d}_stats.json", stats)
    return stats


def check_inputs_unchanged(store_dir: str | Path) -> None:
    store = EmbeddingStore(store_dir)
    for part in sorted(store.completed_parts()):
        stats = store.part_stats(part)
        recorded = stats["fingerprint"]
        try:
            current = fingerprint(stats["shard"]).to_dict()
        except (OSError, FileNotFoundError) as error:
            raise InputError(f"shard {stats['shard']} embedded earlier cannot be read now ({error}); restore it or rerun embed") from error
        changed = [f for f in ("size", "mtime", "etag") if recorded.get(f) is not None and recorded.get(f) != current.get(f)]
        if changed:
            details = ", ".join(f"{f} {recorded[f]} -> {current[f]}" for f in changed)
            raise InputError(
                f"shard {stats['shard']} changed since `dedup embed` ({details}); writing now would mix old "
                "decisions with new data. Rerun the pipeline (embed, find, select, write) in a new run folder."
            )


def check_output_location(out_dir: Path, shards: list[str]) -> None:
    out = out_dir.resolve()
    for shard in shards:
        if is_remote(shard):
            continue
        source = Path(shard).resolve()
        # an image-folder source is read recursively, so an output inside it would be read back as input;
        # a shard folder is read one level deep, so only the folder itself is off limits
        folder = source if source.is_dir() else source.parent
        inside = out.is_relative_to(folder) if source.is_dir() else out == folder
        if inside or folder.is_relative_to(out):
            raise SettingsError(
                f"output folder {out_dir} is inside the input folder of {shard}, or holds it; "
                "choose an output folder outside the input"
            )


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


def summarize(manifest: pa.Table, shard_stats: list[dict], unreadable_shards: list[dict]) -> dict:
    status = manifest["status"].to_pylist()
    counts = Counter(status)
    reference = manifest["reference_match"].to_pylist() if "reference_match" in manifest.column_names else [None] * len(status)
    dropped_by = Counter(
        f"reference match ({r})" if r else f"duplicate ({m})"
        for s, m, r in zip(status, manifest["match"].to_pylist(), reference) if s == "dropped"
    )
    unreadable_by = Counter(reason_class(r) for s, r in zip(status, manifest["reason"].to_pylist()) if s == "unreadable")
    written = sum(s["samples"] for s in shard_stats)
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
    summary["reconciles"] = (
        input_samples == counts["kept"] + counts["dropped"] + counts["unreadable"]
        and written == counts["kept"]
        and sum(dropped_by.values()) == counts["dropped"]
        and sum(unreadable_by.values()) == counts["unreadable"]
    )
    return summary


def write(
    store_dir: str | Path,
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    settings: WriteSettings | None = None,
    engine=None,
    reporter: Reporter = SILENT,
) -> dict:
    """Write the kept samples of manifest.parquet into new shards; write summary.json."""
    settings = settings or WriteSettings()
    settings.validate()
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir / "shards"
    manifest = load_manifest(run_dir)
    store = EmbeddingStore(store_dir)
    inputs = [store.part_stats(p) for p in sorted(store.completed_parts())]
    check_output_location(out_dir, [s["shard"] for s in inputs])
    check_inputs_unchanged(store_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)

    plan = plan_output(manifest, settings.samples_per_shard)
    _remove_outputs_beyond(out_dir, settings.prefix, len(plan))
    # read members with the limit embed used, so every sample it accepted can be copied
    max_member_bytes = (store.read_spec() or {}).get("max_member_bytes", DEFAULT_MAX_MEMBER_BYTES)
    units = []
    for number, rows in enumerate(plan):
        marker = out_dir / f"{settings.prefix}-{number:05d}_stats.json"
        if marker.exists() and (out_dir / shard_name(settings.prefix, number)).exists() and read_json(marker).get("plan_digest") == plan_digest(rows):
            continue
        units.append(Unit(f"write:{number}", write_output_shard, {
            "number": number, "rows": rows, "out_dir": str(out_dir), "prefix": settings.prefix,
            "max_member_bytes": max_member_bytes, "store_dir": str(store_dir),
        }))
    run_units(engine or LocalEngine(settings.workers), units, "write", len(plan), "output shards", reporter)
    shard_stats = [read_json(out_dir / f"{settings.prefix}-{n:05d}_stats.json") for n in range(len(plan))]
    unreadable_shards = [
        {"shard": s["shard"], "reason": reason} for s in inputs for reason in s["shard_faults"] if s["samples"] == 0
    ]
    summary = summarize(manifest, shard_stats, unreadable_shards)
    summary["output_dir"] = str(out_dir)
    write_json(run_dir / "summary.json", summary)
    reporter.event("write_done", **summary)
    if not summary["reconciles"]:
        raise DedupError(f"counts do not reconcile, see {run_dir / 'summary.json'}; this is a bug, please report it")
    return summary


def _remove_outputs_beyond(out_dir: Path, prefix: str, count: int) -> None:
    """Output shards numbered past the current plan belong to an older plan; they would be read as data."""
    for path in list(out_dir.glob(f"{prefix}-*.tar")) + list(out_dir.glob(f"{prefix}-*_stats.json")):
        number = path.name[len(prefix) + 1:len(prefix) + 6]
        if number.isdigit() and int(number) >= count:
            path.unlink()
