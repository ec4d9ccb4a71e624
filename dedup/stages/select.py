"""`select`: a keep decision for every input sample, with its reason, written to manifest.parquet.

Keep rule inside a group (documented in docs/pipeline.md): largest image (width x height), then longest
caption, then first seen (input shard order, then position in the shard). Policies:
- one: keep the best sample of each group;
- cap:K: keep the K best of each group;
- none: keep everything, only report the groups.
Samples that could not be embedded are listed as unreadable with their reason, so the manifest has one row
per input sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dedup.io.atomic import read_parquet, write_parquet
from dedup.io.labels import read_labels
from dedup.io.manifest import MANIFEST_SCHEMA, unreadable_rows
from dedup.io.runfolder import RunFolder, load_groups
from dedup.io.samples import sample_id
from dedup.io.store import EmbeddingStore
from dedup.progress import SILENT, Reporter
from dedup.search.components import pair_keys
from dedup.search.relations import with_relations
from dedup.settings import SelectSettings, parse_policy
from dedup.stages.captions import diversified_captions
from dedup.stages.labelled import regroup_with_labels, with_named_relations


def rank_in_groups(groups: pa.Table, prefer: str = "largest", first: np.ndarray | None = None) -> np.ndarray:
    """Rank of each row within its group under the keep rule (0 = keep first). `prefer`: largest (largest
    image, then longest caption, then first seen) or first (first seen); `first`: rows that go before all others
    whatever the rule (an incremental run's earlier keeps)."""
    rows = len(groups)
    keys: list[np.ndarray] = [groups["sample_index"].to_numpy(), groups["shard_index"].to_numpy()]
    if prefer == "largest":
        width = groups["width"].fill_null(0).to_numpy().astype(np.int64)
        height = groups["height"].fill_null(0).to_numpy().astype(np.int64)
        caption_length = pc.utf8_length(groups["caption"].fill_null("")).to_numpy().astype(np.int64)
        keys += [-caption_length, -(width * height)]
    if first is not None:
        keys.append(~np.asarray(first, dtype=bool))
    group_id = groups["group_id"].to_numpy()
    order = np.lexsort((*keys, group_id)) if rows else np.zeros(0, np.int64)
    sorted_groups = group_id[order]
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = sorted_groups[1:] != sorted_groups[:-1]
    start_positions = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
    ranks = np.empty(len(order), dtype=np.int32)
    ranks[order] = np.arange(len(order)) - start_positions
    return ranks


def decide(
    groups: pa.Table,
    policy: str,
    diversify_captions: bool = False,
    person_label: list[str | None] | None = None,
    prefer: str = "largest",
    first: np.ndarray | None = None,
    relation: list[str | None] | None = None,
    notes: list[str | None] | None = None,
) -> pa.Table:
    """The manifest rows of `groups` under `policy`; `relation`: each row's nearest pair's relation; `notes`: what
    else the reason of a row says (the pairs kept apart by select.drop_relations)."""
    kind, cap = parse_policy(policy)
    rows = len(groups)
    ranks = rank_in_groups(groups, prefer, first)
    group_id = groups["group_id"].to_numpy()
    size = groups["group_size"].to_numpy()
    best_row = np.zeros(rows, dtype=np.int64)
    best_row_of_group = {}
    for row in np.flatnonzero(ranks == 0).tolist():
        best_row_of_group[group_id[row]] = row
    best_row = np.array([best_row_of_group[g] for g in group_id], dtype=np.int64) if rows else best_row
    keys = groups["key"].to_pylist()
    shards = groups["shard"].to_pylist()
    matches = groups["match"].to_pylist()
    similarity = groups["nearest_similarity"].to_pylist()
    nearest = groups["nearest_key"].to_pylist()

    relation = relation or [None] * rows
    limit: int | None = {"one": 1, "cap": cap, "none": None}[kind]
    status, reasons = [], []
    for row in range(rows):
        if size[row] == 1:
            status.append("kept")
            reasons.append("unique")
            continue
        best = best_row[row]
        described = (
            f"{matches[row]} match with {nearest[row]}, similarity {similarity[row]:.4f}"
            + (f", {relation[row]}" if relation[row] else "")
            if matches[row]
            else ""
        )
        if limit is None:
            status.append("kept")
            reasons.append(f"in duplicate group of {size[row]} (policy none: report only; {described})")
        elif ranks[row] < limit:
            status.append("kept")
            reasons.append(
                f"kept: best of duplicate group of {size[row]}"
                if ranks[row] == 0
                else f"kept: rank {ranks[row] + 1} of duplicate group of {size[row]}, within cap {limit}"
            )
        else:
            status.append("dropped")
            reasons.append(f"duplicate of {shards[best]}:{keys[best]} ({described})")
    new_captions: list[str | None] = [None] * rows
    changes: list[str | None] = [None] * rows
    if diversify_captions:
        kept = np.array([s == "kept" for s in status], dtype=bool)
        captions = groups["caption"].fill_null("").to_pylist()
        new_captions, changes = diversified_captions(group_id, ranks, kept, captions, keys)
    person_label = person_label or [None] * rows
    for extra in (notes or [None] * rows, person_label):
        reasons = [reason if note is None else f"{reason}; {note}" for reason, note in zip(reasons, extra)]
    return pa.table(
        {
            **sample_id(groups),
            "status": pa.array(status, pa.string()),
            "reason": pa.array(reasons, pa.string()),
            "group_id": groups["group_id"],
            "group_size": groups["group_size"],
            "rank": pa.array(ranks, pa.int32()),
            "kept_key": pa.array([keys[i] for i in best_row], pa.string()),
            "kept_shard": pa.array([shards[i] for i in best_row], pa.string()),
            "match": groups["match"],
            "relation": pa.array(relation, pa.string()),
            "similarity": groups["nearest_similarity"],
            "caption_change": pa.array(changes, pa.string()),
            "new_caption": pa.array(new_captions, pa.string()),
            "person_label": pa.array(person_label, pa.string()),
        },
        schema=MANIFEST_SCHEMA,
    )


def select(
    store_dir: str | Path,
    run_dir: str | Path,
    settings: SelectSettings | None = None,
    reporter: Reporter = SILENT,
    first: np.ndarray | None = None,
) -> dict:
    """Apply the keep policy to groups.parquet (after a person's labels, when RUN_DIR/labels.parquet has
    some); write manifest.parquet with one row per input sample. `first`: rows (of groups.parquet) that go before
    all others in their groups whatever the keep rule (dedup add: the samples kept before)."""
    settings = settings or SelectSettings()
    settings.validate()
    folder = RunFolder(run_dir)
    groups = load_groups(run_dir)
    pairs = with_relations(read_parquet(folder.pairs)) if folder.pairs.exists() else None
    labels = read_labels(folder.labels) if settings.labels and folder.labels.exists() else {}
    renamed = 0
    if pairs is not None and labels:
        pairs, renamed = with_named_relations(groups, pairs, labels)
    apart = (
        None if pairs is None else ~np.isin(pairs["relation"].to_numpy(zero_copy_only=False), settings.drop_relations)
    )
    person_label, label_counts = None, {}
    if pairs is not None and apart is not None and (labels or apart.any()):
        labelled = regroup_with_labels(groups, pairs, labels, apart)
        groups, apart = labelled.groups, labelled.apart
        if labels:
            person_label, label_counts = labelled.person_label, dict(labelled.counts)
            if renamed:
                label_counts["relation_renamed"] = renamed
            reporter.info(f"select: labels from {folder.labels}: {describe_label_counts(label_counts)}")
    relation, notes = pair_relations(groups, pairs, apart)
    failures = EmbeddingStore(store_dir).load().failures
    decided = decide(
        groups, settings.policy, settings.diversify_captions, person_label, settings.prefer, first, relation, notes
    )
    manifest = pa.concat_tables([decided, unreadable_rows(failures)])
    order = pc.sort_indices(manifest, [("shard_index", "ascending"), ("sample_index", "ascending")])
    manifest = manifest.take(order)
    write_parquet(folder.manifest, manifest)
    counts = {
        status: int(pc.sum(pc.equal(manifest["status"], status)).as_py() or 0)
        for status in ("kept", "dropped", "unreadable")
    }
    diversified = int(pc.sum(pc.is_valid(manifest["new_caption"])).as_py() or 0)
    reporter.info(
        f"select ({settings.policy}): {counts['kept']} kept, {counts['dropped']} dropped, {counts['unreadable']} unreadable"
        + (f"; {diversified} kept copies given other captions" if settings.diversify_captions else "")
    )
    summary = {"policy": settings.policy, "samples": len(manifest), **counts, "captions_changed": diversified}
    if apart is not None:
        summary["pairs_kept_apart"] = int(apart.sum())
    return summary | ({"labels": label_counts} if person_label is not None else {})


def pair_relations(
    groups: pa.Table, pairs: pa.Table | None, apart: np.ndarray | None
) -> tuple[list[str | None], list[str | None]]:
    """For each row of `groups`: the relation of its pair with its nearest duplicate (None without one, or where a
    person's label made the pair), and a note naming the relations of its pairs kept `apart`."""
    rows = len(groups)
    if pairs is None:
        return [None] * rows, [None] * rows
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    names = pairs["relation"].to_pylist()
    relation_of = dict(zip(pair_keys(a, b).tolist(), names))
    row_of = {place: row for row, place in enumerate(zip(groups["shard"].to_pylist(), groups["key"].to_pylist()))}
    relation: list[str | None] = []
    for row, place in enumerate(zip(groups["nearest_shard"].to_pylist(), groups["nearest_key"].to_pylist())):
        other = row_of.get(place) if place[1] is not None else None
        key = None if other is None else int(pair_keys(np.array([row]), np.array([other]))[0])
        relation.append(relation_of.get(key) if key is not None else None)
    kept_apart: dict[int, set[str]] = {}
    if apart is not None:
        for index in np.flatnonzero(apart).tolist():
            for row in (int(a[index]), int(b[index])):
                kept_apart.setdefault(row, set()).add(names[index])
    notes = [
        f"kept apart from its {' and '.join(sorted(kept_apart[row]))} pairs (not in select.drop_relations)"
        if row in kept_apart
        else None
        for row in range(rows)
    ]
    return relation, notes


def describe_label_counts(counts: dict) -> str:
    described = {
        "distinct_cut": "pairs cut apart",
        "distinct_still_joined": "of them still joined through other pairs (label those too)",
        "duplicate_added": "pairs joined",
        "distinct_not_found": "labelled distinct and not paired anyway",
        "duplicate_already_found": "labelled duplicate and already paired",
        "not_in_run": "naming samples this run does not have (ignored)",
        "relation_renamed": "pairs whose relation a person named",
    }
    return ", ".join(f"{counts[name]} {text}" for name, text in described.items() if counts.get(name)) or "none"
