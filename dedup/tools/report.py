"""`report`: one self-contained HTML file a person can open from disk to see what a run removed and why.

Counts and how they reconcile; group sizes; the largest groups as thumbnail strips (caption, key, shard,
similarity to the kept sample); pairs sampled in similarity bands around the threshold, so one can see where
duplicates stop; purge and verify results when present. Bounded in size whatever the run's size: a fixed
number of groups and pairs, chosen deterministically.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dedup.errors import InputError, require_extra
from dedup.io.atomic import atomic_open, read_parquet
from dedup.io.runfolder import RunFolder
from dedup.io.store import EmbeddingStore
from dedup.search import matching
from dedup.search.relations import with_relations
from dedup.search.signals import cosine
from dedup.settings import FindSettings, ReportSettings
from dedup.tools.thumbnails import fetch_thumbnails

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:1200px;color:#222}
h1{margin-bottom:.2rem} h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
table{border-collapse:collapse} td,th{padding:.25rem .7rem;border-bottom:1px solid #eee;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#176f2c;font-weight:600} .bad{color:#b00020;font-weight:600}
.strip{display:flex;gap:.6rem;overflow-x:auto;padding:.4rem 0}
figure{margin:0;width:140px;flex:none;font-size:.75rem}
figure img{width:128px;height:128px;object-fit:contain;background:#f4f4f4;display:block}
figure.kept img{outline:3px solid #2e7d32} figure.dropped img{outline:3px solid #c62828;opacity:.9}
figcaption b{word-break:break-all}
.muted{color:#777} .pair{display:flex;gap:.4rem;align-items:center;margin:.3rem 1rem .3rem 0}
.band{display:flex;flex-wrap:wrap}
"""


def _figure_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def group_size_histogram(sizes: list[int]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values, counts = np.unique(sizes, return_counts=True) if sizes else (np.array([]), np.array([]))
    figure, axis = plt.subplots(figsize=(6, 2.8), dpi=100)
    axis.bar([str(v) for v in values], counts, color="#5b7db1")
    axis.set_xlabel("group size (samples)")
    axis.set_ylabel("groups")
    axis.set_yscale("log" if len(counts) and counts.max() > 50 else "linear")
    figure.tight_layout()
    uri = _figure_uri(figure)
    plt.close(figure)
    return uri


def _esc(value) -> str:
    return html.escape("" if value is None else str(value))


def _shard_name(shard: str | None) -> str:
    return (shard or "").rstrip("/").rsplit("/", 1)[-1]


def duplicate_groups(groups) -> tuple[np.ndarray, np.ndarray, int]:
    """Ids and sizes of the groups holding more than one sample, and how many samples they hold."""
    sizes = groups["group_size"].to_numpy()
    multi = sizes > 1
    ids, first = np.unique(groups["group_id"].to_numpy()[multi], return_index=True)
    return ids, sizes[multi][first], int(multi.sum())


def choose_groups(groups, max_groups: int) -> list[int]:
    """The largest groups, ties broken by group id, so the choice is the same on every run."""
    ids, sizes, _ = duplicate_groups(groups)
    return ids[np.lexsort((ids, -sizes))][:max_groups].tolist()


def similarity_bands(threshold: float) -> list[tuple[float, float]]:
    edges = [threshold - 0.08, threshold - 0.04, threshold - 0.02, threshold, threshold + 0.01, threshold + 0.02]
    edges = [e for e in edges if 0 < e < 1] + [1.0001]
    return list(zip(edges[:-1], edges[1:]))


def near_pairs(
    embeddings: np.ndarray, pairs, lowest: float, seed: int, sample: int = 20_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The run's duplicate pairs, plus near misses below the threshold found on a sample of rows."""
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    similarity = pairs["similarity"].to_numpy()
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(embeddings), min(sample, len(embeddings)), replace=False))
    if len(rows) > 1:
        sa, sb, _ = matching.embedding_pairs(
            np.ascontiguousarray(embeddings[rows]), lowest, FindSettings(phash_radius=None)
        )
        a, b = np.concatenate([a, rows[sa]]), np.concatenate([b, rows[sb]])
        similarity = np.concatenate([similarity, cosine(embeddings, embeddings, rows[sa], rows[sb])])
    return a, b, similarity


def build_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    embeddings: str | Path | None = None,
    settings: ReportSettings | None = None,
) -> Path:
    require_extra("matplotlib", "report", "dedup report")
    settings = settings or ReportSettings()
    settings.validate()
    max_groups, max_members, pairs_per_band, seed = (
        settings.max_groups,
        settings.max_members,
        settings.pairs_per_band,
        settings.seed,
    )
    folder = RunFolder(run_dir)
    for needed in (folder.groups, folder.manifest):
        if not needed.exists():
            raise InputError(f"{needed} does not exist; run `dedup run` (or find and select) first")
    out = Path(out) if out else folder.report
    groups = read_parquet(folder.groups)
    manifest = read_parquet(folder.manifest)
    pairs = with_relations(read_parquet(folder.pairs))
    find_info = json.loads(folder.find_summary.read_text()) if folder.find_summary.exists() else {}
    summary = json.loads(folder.summary.read_text()) if folder.summary.exists() else None
    store = EmbeddingStore(embeddings or folder.embeddings).load()
    threshold = (find_info.get("settings") or {}).get("threshold") or 0.95

    chosen_groups = choose_groups(groups, max_groups)
    shown = groups.filter(pc.is_in(groups["group_id"], value_set=pa.array(chosen_groups, pa.int64()))).to_pylist()
    status_of = statuses(manifest, shown)
    members: dict[int, list[dict]] = {g: [] for g in chosen_groups}
    for record in shown:
        members[record["group_id"]].append(record)
    for group_id, rows in members.items():
        rows.sort(key=lambda r: (status_of.get((r["shard"], r["sample_index"]), "") != "kept", r["row"]))
        members[group_id] = rows[:max_members]

    lowest = similarity_bands(threshold)[0][0]
    a, b, similarity = near_pairs(store.embeddings, pairs, lowest, seed)
    rng = np.random.default_rng(seed)
    band_pairs: list[tuple[float, float, int, list[tuple[int, int, float]]]] = []
    for low, high in similarity_bands(threshold):
        inside = np.flatnonzero((similarity >= low) & (similarity < high) & (a != b))
        _, unique_positions = (
            np.unique(
                np.stack([np.minimum(a[inside], b[inside]), np.maximum(a[inside], b[inside])]),
                axis=1,
                return_index=True,
            )
            if len(inside)
            else (None, np.zeros(0, int))
        )
        inside = inside[np.sort(unique_positions)]
        picked = (
            rng.choice(inside, min(pairs_per_band, len(inside)), replace=False) if len(inside) else np.zeros(0, int)
        )
        band_pairs.append(
            (low, high, len(inside), [(int(a[i]), int(b[i]), float(similarity[i])) for i in sorted(picked)])
        )

    pair_rows = sorted({row for _, _, _, picked in band_pairs for i, j, _ in picked for row in (i, j)})
    records = dict(zip(pair_rows, groups.take(pa.array(pair_rows, pa.int64())).to_pylist()))
    wanted = [(r["shard"], r["sample_index"]) for rows in members.values() for r in rows]
    wanted += [(records[row]["shard"], records[row]["sample_index"]) for row in pair_rows]
    thumbs = fetch_thumbnails(wanted)

    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>dedup report: {_esc(folder.root.name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>dedup report</h1><p class='muted'>run folder {_esc(folder.root)}</p>",
    ]
    parts.append(counts_section(summary, manifest))
    _, group_sizes, samples_in_groups = duplicate_groups(groups)
    parts.append(
        f"<h2>Duplicate groups</h2><p>{len(group_sizes)} groups hold {samples_in_groups} samples; "
        f"largest {int(group_sizes.max(initial=0))}.</p><img id='histogram' alt='histogram of group sizes' src='{group_size_histogram(group_sizes.tolist())}'>"
    )
    parts.append(relations_section(pairs))
    parts.append(
        f"<h2>The {len(chosen_groups)} largest groups</h2><p class='muted'>green: kept; red: dropped. "
        "Similarity is the cosine to the kept sample.</p>"
    )
    for group_id in chosen_groups:
        parts.append(group_section(group_id, members[group_id], status_of, thumbs, store.embeddings))
    parts.append(
        f"<h2>Pairs by similarity band</h2><p>Threshold {threshold}. Bands below it hold near misses found on a sample; "
        "look where the pairs stop being the same picture.</p>"
    )
    for low, high, total, shown in band_pairs:
        parts.append(band_section(low, min(high, 1.0), total, shown, records, thumbs, threshold))
    for extra in (folder.purge_summary, folder.verify_report):
        if extra.exists():
            shown = _esc(json.dumps(json.loads(extra.read_text()), indent=2))
            parts.append(f"<h2>{_esc(extra.stem)}</h2><pre id='{extra.stem}'>{shown}</pre>")
    parts.append("</body></html>")
    with atomic_open(out, "w") as handle:
        handle.write("\n".join(parts))
    return out


RELATION_MEANING = {
    "exact": "the same bytes",
    "copy": "one capture, edited (resized, recompressed, cropped, recoloured, overlaid)",
    "partial": "a region of one is the other, or is pasted into it",
    "same_scene": "another shot of the same place: a different moment or subject",
    "similar": "alike, with no geometry in common",
    "unknown": "not examined (past find.relate_per_row, or a run from before relations)",
}


def relations_section(pairs) -> str:
    """The run's pairs counted by relation, each with what it means (docs/relations.md)."""
    names = pairs["relation"].to_pylist()
    rows = "".join(
        f"<tr data-relation='{name}'><td>{name}</td><td class='n'>{names.count(name):,}</td>"
        f"<td class='muted'>{_esc(meaning)}</td></tr>"
        for name, meaning in RELATION_MEANING.items()
        if name in names
    )
    return (
        "<h2>Pairs by relation</h2><p>What kind of match each pair is; select.drop_relations chooses which make "
        f"duplicates.</p><table id='relations'>{rows}</table>"
    )


def counts_section(summary: dict | None, manifest) -> str:
    status = manifest["status"].to_pylist()
    counts = {s: status.count(s) for s in ("kept", "dropped", "unreadable")}
    total = len(status)
    reconciles = total == sum(counts.values()) and (summary is None or summary.get("reconciles"))
    rows = [("input samples", total), ("kept", counts["kept"]), ("dropped", counts["dropped"])]
    if summary:
        rows += [(f"&nbsp;&nbsp;{_esc(k)}", v) for k, v in summary.get("dropped_by_reason", {}).items()]
        by_relation = summary.get("dropped_by_relation", {})
        rows += [(f"&nbsp;&nbsp;as {_esc(k)}", v) for k, v in by_relation.items()]
    rows.append(("unreadable", counts["unreadable"]))
    if summary:
        rows += [(f"&nbsp;&nbsp;{_esc(k)}", v) for k, v in summary.get("unreadable_by_reason", {}).items()]
        rows.append(("written to output shards", summary.get("written_samples")))
    table = "".join(
        f"<tr><td>{label}</td><td class='n'>{value:,}</td></tr>" for label, value in rows if value is not None
    )
    check = (
        f"<p id='reconcile' class='{'ok' if reconciles else 'bad'}'>input = kept + dropped + unreadable: "
        f"{total:,} = {counts['kept']:,} + {counts['dropped']:,} + {counts['unreadable']:,} "
        f"{'(reconciles)' if reconciles else '(DOES NOT RECONCILE)'}</p>"
    )
    shards = ""
    if summary and summary.get("unreadable_shards"):
        shards = (
            "<p>Unreadable shards:</p><ul>"
            + "".join(f"<li>{_esc(s['shard'])}: {_esc(s['reason'])}</li>" for s in summary["unreadable_shards"])
            + "</ul>"
        )
    return f"<h2>Counts</h2><table id='counts'>{table}</table>{check}{shards}"


def _figure(record: dict, status: str, thumbs: dict, note: str) -> str:
    uri = thumbs.get((record["shard"], record["sample_index"]))
    image = (
        f"<img src='{uri}' alt='{_esc(record['key'])}' data-key='{_esc(record['key'])}'>"
        if uri
        else "<div class='muted'>(image unavailable)</div>"
    )
    caption = _esc((record.get("caption") or "")[:90])
    return (
        f"<figure class='{status}'>{image}<figcaption><b>{_esc(record['key'])}</b><br>{_esc(_shard_name(record['shard']))}"
        f"<br>{note}<br><span class='muted'>{caption}</span></figcaption></figure>"
    )


def statuses(manifest, rows: list[dict]) -> dict[tuple[str, int], str]:
    """Manifest status of the given samples, reading only the manifest rows that can match them."""
    places = {(r["shard"], r["sample_index"]) for r in rows}
    candidates = manifest.filter(
        pc.is_in(manifest["sample_index"], value_set=pa.array(sorted({i for _, i in places}), pa.int32()))
    )
    return {
        (s, i): st
        for s, i, st in zip(
            candidates["shard"].to_pylist(), candidates["sample_index"].to_pylist(), candidates["status"].to_pylist()
        )
        if (s, i) in places
    }


def group_section(group_id: int, rows: list[dict], status_of: dict, thumbs: dict, embeddings: np.ndarray) -> str:
    kept = next((r for r in rows if status_of.get((r["shard"], r["sample_index"])) == "kept"), rows[0])
    figures = []
    for record in rows:
        status = status_of.get((record["shard"], record["sample_index"]), "unknown")
        similarity = float(embeddings[record["row"]] @ embeddings[kept["row"]])
        note = "kept" if record is kept else f"{status}, cos {similarity:.3f} ({_esc(record['match'])})"
        figures.append(_figure(record, status, thumbs, note))
    size = rows[0]["group_size"]
    return (
        f"<section class='group' data-group-id='{group_id}' data-group-size='{size}'><h3>group {group_id}: {size} samples"
        f"{'' if size <= len(rows) else f' (first {len(rows)} shown)'}</h3><div class='strip'>{''.join(figures)}</div></section>"
    )


def band_section(
    low: float, high: float, total: int, picked: list, records: dict[int, dict], thumbs: dict, threshold: float
) -> str:
    side = "duplicates" if low >= threshold else "below the threshold"
    items = []
    for i, j, pair_cosine in picked:
        items.append(
            f"<div class='pair' data-similarity='{pair_cosine:.4f}'>{_figure(records[i], '', thumbs, '')}"
            f"{_figure(records[j], '', thumbs, f'cos {pair_cosine:.4f}')}</div>"
        )
    return (
        f"<section class='band' data-low='{low:.3f}'><h3>cosine {low:.3f} to {high:.3f} ({side}): {total:,} pairs seen</h3>"
        f"<div class='band'>{''.join(items) or '<p class=muted>none</p>'}</div></section>"
    )
