"""`write`: stream the input shards again and copy the kept samples into new shards, byte for byte.

The kept samples, in input order, are cut into output shards of `samples_per_shard`. Each output shard
is one unit of work: it reads only the input shards it needs (stopping as soon as it has its samples),
writes `PREFIX-NNNNN.tar` under a temporary name, renames it, then writes `PREFIX-NNNNN_stats.json`
as its completion marker. A rerun skips shards whose marker matches the plan. `summary.json` comes last.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from dedup.engine import LocalEngine, Unit, run_units
from dedup.errors import DedupError, InputError, SettingsError
from dedup.io import tarspans
from dedup.io.atomic import atomic_open, read_json, remove_stale_temporaries, write_json
from dedup.io.imaging import caption_of
from dedup.io.reader import iter_selected
from dedup.io.remote import RetryPolicy
from dedup.io.runfolder import RunFolder, load_manifest, removals_record
from dedup.io.sources import fingerprint, is_remote, local_root
from dedup.io.store import EmbeddingStore
from dedup.io.tarwriter import SampleTarWriter
from dedup.progress import SILENT, Reporter
from dedup.settings import WriteSettings
from dedup.settings.run import DEFAULT_MAX_MEMBER_BYTES
from dedup.stages.summary import summarize
from dedup.stages.write_plan import (
    OUTPUT_COLUMNS,
    WRITE_COLUMNS,
    InputSlice,
    plan_digest,
    plan_output,
    record_outputs,
    sample_count,
    shard_name,
    write_removals,
)

FIXED_MTIME = 0  # identical bytes on every run, so an interrupted and resumed run equals a clean one


def changed_since_embed(shard: str, index: int, now: str, was: str) -> InputError:
    return InputError(
        f"shard {shard} changed since embed: sample {index} is now {now!r}, was {was!r}; "
        "rerun from `dedup embed` with a new run folder"
    )


@dataclass
class CopyRange:
    shard: str
    start: int
    end: int
    first_key: str  # checked against the shard's header at `start` before copying


def byte_ranges(slices: list[InputSlice], store_dir: str | None = None) -> tuple[list[CopyRange], int] | None:
    """The byte ranges that hold the slices' samples (samples that follow each other in their input merged
    into one range), and their payload bytes; None when this output shard must be written member by member
    (gzip or remote input, a key repeated side by side, a sample interrupted by a folder entry).
    The ranges embed recorded are used where the store has them; otherwise the shard's headers are scanned."""
    keys = [key for piece in slices for key in piece.keys]
    if any(map(str.__eq__, keys, keys[1:])) or not all(tarspans.is_plain_local_tar(piece.shard) for piece in slices):
        return None
    if any(piece.recaptioned for piece in slices):  # new captions: the samples are written again
        return None
    ranges, payload = [], 0
    for piece in slices:
        located = _locate(piece, store_dir)
        if located is None:
            return None
        starts, ends, payloads = located
        payload += int(payloads.sum())
        runs = np.flatnonzero(starts[1:] != ends[:-1]) + 1  # where a sample does not begin where the last ended
        firsts, lasts = [0, *runs.tolist()], [*(runs - 1).tolist(), len(starts) - 1]
        ranges += [CopyRange(piece.shard, int(starts[a]), int(ends[b]), piece.keys[a]) for a, b in zip(firsts, lasts)]
    return ranges, payload


def _locate(piece: InputSlice, store_dir: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(starts, ends, payload bytes) of the slice's samples; None when one of them is not contiguous."""
    recorded = recorded_spans(store_dir, piece.part) if store_dir else None
    if recorded is None:
        table = tarspans.span_table(piece.shard)
        rows = piece.indexes
        found = [table.keys[i] if i < len(table.keys) else "nothing" for i in rows.tolist()]
        for index, now, was in zip(rows.tolist(), found, piece.keys):
            if now != was:
                raise changed_since_embed(piece.shard, index, now, was)
        starts, ends, payloads = table.starts[rows], table.ends[rows], table.payloads[rows]
        contiguous = table.contiguous[rows]
    else:
        # the keys are embed's; copy_ranges checks them against the shard's headers once per range
        rows = np.searchsorted(recorded[:, 0], piece.indexes)
        missing = (rows >= len(recorded)) | (recorded[np.minimum(rows, len(recorded) - 1), 0] != piece.indexes)
        if missing.any():
            first = int(np.argmax(missing))
            raise changed_since_embed(piece.shard, int(piece.indexes[first]), "not recorded", piece.keys[first])
        starts, ends, payloads = recorded[rows, 1], recorded[rows, 2], recorded[rows, 3]
        contiguous = starts >= 0
    return (starts, ends, payloads) if contiguous.all() else None


@lru_cache(maxsize=64)
def _recorded_spans(path: str, size: int, mtime_ns: int) -> np.ndarray:
    spans = np.load(path)
    return spans[np.argsort(spans[:, 0], kind="stable")]


def recorded_spans(store_dir: str, part: int) -> np.ndarray | None:
    """Rows of (sample index, start, end, payload bytes) as embed recorded them for one part (a plain local
    tar), by sample index; None for stores without them (older runs, clip-retrieval metadata, other sources)."""
    path = EmbeddingStore(store_dir).spans_path(part)
    if not path.exists():
        return None
    stat = path.stat()
    return _recorded_spans(str(path), stat.st_size, stat.st_mtime_ns)


def copy_ranges(path: Path, ranges: list[CopyRange], durable: bool) -> None:
    size = 0
    with atomic_open(path, "wb", durable=durable) as handle:
        handle.flush()
        target = handle.fileno()
        sources: dict[str, int] = {}
        try:
            for piece in ranges:
                if piece.shard not in sources:
                    sources[piece.shard] = tarspans.open_for_copy(piece.shard)
                found = tarspans.key_at(piece.shard, sources[piece.shard], piece.start)
                if found != piece.first_key:  # its size and time matched embed's, but its bytes moved
                    raise InputError(
                        f"shard {piece.shard} changed since embed: at byte {piece.start} it holds {found!r}, "
                        f"embed saw {piece.first_key!r}; rerun from `dedup embed` with a new run folder"
                    )
                tarspans.copy_range(sources[piece.shard], target, piece.start, piece.end - piece.start)
                size += piece.end - piece.start
        finally:
            for fd in sources.values():
                os.close(fd)
        os.write(target, tarspans.end_of_archive(size))


def rewrite_members(
    path: Path, slices: list[InputSlice], max_member_bytes: int, durable: bool, retry: RetryPolicy | None = None
) -> tuple[int, int, list[dict]]:
    expected = {(piece.shard, index): key for piece in slices for index, key in zip(piece.indexes.tolist(), piece.keys)}
    new_caption = {
        (piece.shard, index): caption
        for piece in slices
        if piece.recaptioned
        for index, caption in zip(piece.indexes.tolist(), piece.captions or [])
        if caption is not None
    }
    written, payload_bytes, previous_key, renamed = set(), 0, None, []
    with atomic_open(path, "wb", durable=durable) as handle:
        writer = SampleTarWriter(handle, mtime=FIXED_MTIME, owner="dedup")
        for sample in iter_selected(expected, max_member_bytes, retry):
            was = expected[(sample.shard, sample.index)]
            if sample.key != was:
                raise changed_since_embed(sample.shard, sample.index, sample.key, was)
            key = sample.key
            if key == previous_key:
                # two samples with one key side by side would be read back as one sample
                key = f"{sample.key}_dup-{Path(sample.shard).name.split('.')[0]}-{sample.index}"
                renamed.append(
                    {"shard": sample.shard, "sample_index": sample.index, "key": sample.key, "written_as": key}
                )
            files = sample.files
            if (sample.shard, sample.index) in new_caption:
                files = with_caption(files, new_caption[(sample.shard, sample.index)])
            payload_bytes += writer.write(key, files)
            previous_key = key
            written.add((sample.shard, sample.index))
        missing = [place for place in expected if place not in written]
        if missing:
            shard = missing[0][0]
            gone = sum(1 for place in missing if place[0] == shard)
            raise InputError(f"shard {shard} changed since embed: {gone} kept samples are gone")
        writer.close()
    return len(written), payload_bytes, renamed


def with_caption(files: dict[str, bytes], caption: str) -> dict[str, bytes]:
    """The sample's fields with `caption` as its .txt and its json's caption; the json keeps the original
    caption as `original_caption`."""
    original = caption_of(files)
    files = {**files, "txt": caption.encode()}
    try:
        meta = json.loads(files["json"]) if "json" in files else {}
    except (ValueError, UnicodeDecodeError):
        meta = None  # not ours to rewrite: the .txt carries the new caption
    if isinstance(meta, dict):
        meta.update({"caption": caption, "original_caption": original})
        files["json"] = json.dumps(meta, ensure_ascii=False).encode()
    return files


def write_output_shard(
    number: int,
    slices: list[InputSlice],
    out_dir: str,
    prefix: str,
    max_member_bytes: int,
    store_dir: str | None = None,
    durable: bool = True,
    retry: dict | None = None,
) -> dict:
    """Copy the samples of `slices` (in order) into one output shard: as raw byte ranges when every input is
    a plain local tar and no key repeats side by side, else member by member. `durable`: fsync the shard
    and its marker before returning (write's `sync = "shard"`); otherwise the OS writes them back."""
    started = time.perf_counter()
    path = Path(out_dir) / shard_name(prefix, number)
    located = byte_ranges(slices, store_dir)
    if located is not None:
        ranges, payload_bytes = located
        copy_ranges(path, ranges, durable)
        written, renamed = sample_count(slices), list[dict]()
    else:
        policy = RetryPolicy(**retry) if retry else None
        written, payload_bytes, renamed = rewrite_members(path, slices, max_member_bytes, durable, policy)
    stats = {
        "shard": path.name,
        "samples": written,
        "payload_bytes": payload_bytes,
        "tar_bytes": path.stat().st_size,
        "plan_digest": plan_digest(slices),
        "renamed_keys": renamed,
        "inputs": sorted({piece.shard for piece in slices}),
        "copy": "byte ranges" if located is not None else "members",
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json(_marker(Path(out_dir), prefix, number), stats, durable=durable)
    return stats


def check_inputs_unchanged(inputs: list[dict], retry: RetryPolicy | None = None) -> None:
    """`inputs`: the store's part statistics, each with the fingerprint of the shard embed read."""
    for stats in inputs:
        if stats["samples"] == 0:  # unreadable when embedded: nothing of it is written
            continue
        recorded = stats["fingerprint"]
        try:
            current = fingerprint(stats["shard"], retry).to_dict()
        except (OSError, FileNotFoundError) as error:
            raise InputError(
                f"shard {stats['shard']} embedded earlier cannot be read now ({error}); restore it or rerun embed"
            ) from error
        changed = [
            f for f in ("size", "mtime", "etag") if recorded.get(f) is not None and recorded.get(f) != current.get(f)
        ]
        if changed:
            details = ", ".join(f"{f} {recorded[f]} -> {current[f]}" for f in changed)
            raise InputError(
                f"shard {stats['shard']} changed since `dedup embed` ({details}); writing now would mix old "
                "decisions with new data. Rerun the pipeline (embed, find, select, write) in a new run folder."
            )


def check_output_location(out_dir: Path | str, shards: list[str]) -> None:
    if is_remote(str(out_dir)):
        return
    out = Path(out_dir).resolve()
    for shard in shards:
        if is_remote(shard):
            continue
        source = Path(local_root(shard)).resolve()
        # an image-folder source is read recursively, so an output inside it would be read back as input;
        # a shard folder is read one level deep, so only the folder itself is off limits
        folder = source if source.is_dir() else source.parent
        inside = out.is_relative_to(folder) if source.is_dir() else out == folder
        if inside or folder.is_relative_to(out):
            raise SettingsError(
                f"output folder {out_dir} is inside the input folder of {shard}, or holds it; "
                "choose an output folder outside the input"
            )


def write(
    store_dir: str | Path,
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    settings: WriteSettings | None = None,
    engine=None,
    reporter: Reporter = SILENT,
    increment: int | None = None,
) -> dict:
    """Write the kept samples of manifest.parquet into new shards; write summary.json. `increment` (dedup add):
    only the kept samples not written before, into PREFIX-incK-NNNNN.tar, and the removal lists of the earlier
    shards whose samples are no longer kept."""
    settings = settings or WriteSettings()
    settings.validate()
    run_dir = Path(run_dir)
    remote_url = str(out_dir) if out_dir is not None and is_remote(str(out_dir)) else None
    # a remote output folder is written here first, then published shard by shard (dedup/io/publish.py)
    out_dir = RunFolder(run_dir).staging if remote_url else Path(out_dir) if out_dir else RunFolder(run_dir).shards
    manifest = load_manifest(run_dir, WRITE_COLUMNS + (OUTPUT_COLUMNS if increment else []))
    store = EmbeddingStore(store_dir)
    inputs = [store.part_stats(p) for p in sorted(store.completed_parts())]
    check_output_location(out_dir, [s["shard"] for s in inputs])
    spec = store.read_spec() or {}
    check_inputs_unchanged(inputs, RetryPolicy(**spec["remote"]) if spec.get("remote") else None)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)

    if increment is None and any(out_dir.glob(f"{settings.prefix}-inc*-*.tar")):
        raise SettingsError(
            f"{out_dir} holds the shards of `dedup add` increments; writing the whole run there again would "
            "put their samples in twice: write to another folder (--out), where the whole run is written afresh"
        )
    prefix = settings.prefix if increment is None else f"{settings.prefix}-inc{increment}"
    unwritten = manifest if increment is None else manifest.filter(pc.is_null(manifest["output_shard"]))
    plan = plan_output(unwritten, settings.samples_per_shard)
    _remove_outputs_beyond(out_dir, prefix, len(plan))
    # read members with the limit embed used, so every sample it accepted can be copied
    max_member_bytes = spec.get("max_member_bytes", DEFAULT_MAX_MEMBER_BYTES)
    units = [
        Unit(
            f"write:{number}",
            write_output_shard,
            {
                "number": number,
                "slices": slices,
                "out_dir": str(out_dir),
                "prefix": prefix,
                "max_member_bytes": max_member_bytes,
                "store_dir": str(store_dir),
                "retry": spec.get("remote"),
                "durable": settings.sync == "shard",
            },
        )
        for number, slices in enumerate(plan)
        if not _already_written(out_dir, prefix, number, slices)
    ]
    # threads: a shard's copy and fsync run outside the GIL, so one shard is copied while another is flushed
    run_units(
        engine or LocalEngine(settings.workers, threads=True), units, "write", len(plan), "output shards", reporter
    )
    shard_stats = [read_json(_marker(out_dir, prefix, n)) for n in range(len(plan))]
    record_outputs(RunFolder(run_dir), plan, shard_stats, prefix, keep_earlier=increment is not None)
    unreadable_shards = [
        {"shard": s["shard"], "reason": reason} for s in inputs for reason in s["shard_faults"] if s["samples"] == 0
    ]
    removed = 0
    if increment is not None:  # the earlier increments' shards count too, less what is no longer kept
        shard_stats = [read_json(p) for p in sorted(out_dir.glob(f"{settings.prefix}-*_stats.json"))]
        removed = write_removals(RunFolder(run_dir), out_dir)
    summary = summarize(manifest, shard_stats, unreadable_shards, removed)
    summary["output_dir"] = str(out_dir)
    if remote_url:
        from dedup.io.publish import publish

        shards = [(shard_name(prefix, n), _marker(out_dir, prefix, n).name) for n in range(len(plan))]
        extra = [removals_record(out_dir).name, *sorted(p.name for p in out_dir.glob("*.removed.txt"))]
        summary["published"] = publish(out_dir, remote_url, shards, extra, prefix)
        summary["output_dir"] = remote_url
    write_json(RunFolder(run_dir).summary, summary)
    reporter.event("write_done", **summary)
    if not summary["reconciles"]:
        raise DedupError(f"counts do not reconcile, see {RunFolder(run_dir).summary}; this is a bug, please report it")
    return summary


def _marker(out_dir: Path, prefix: str, number: int) -> Path:
    return out_dir / f"{prefix}-{number:05d}_stats.json"


def _already_written(out_dir: Path, prefix: str, number: int, slices: list[InputSlice]) -> bool:
    """The shard's marker holds this plan and the shard has the size the marker says (a marker that outlived
    its shard's data in a machine crash, possible with `sync = "none"`, is caught by the size, or is unreadable)."""
    marker, shard = _marker(out_dir, prefix, number), out_dir / shard_name(prefix, number)
    if not marker.exists() or not shard.exists():
        return False
    try:
        stats = read_json(marker)
    except ValueError:
        return False
    return stats.get("plan_digest") == plan_digest(slices) and stats.get("tar_bytes") == shard.stat().st_size


def _remove_outputs_beyond(out_dir: Path, prefix: str, count: int) -> None:
    """Output shards numbered past the current plan belong to an older plan; they would be read as data."""
    for path in list(out_dir.glob(f"{prefix}-*.tar")) + list(out_dir.glob(f"{prefix}-*_stats.json")):
        number = path.name[len(prefix) + 1 : len(prefix) + 6]
        if number.isdigit() and int(number) >= count:
            path.unlink()
