"""A person's labels applied to the duplicate graph before `select` decides (labels from `dedup review`).

A relation a person named replaces find's for that pair, so select.drop_relations judges the pair by it.
A pair labelled "not a duplicate" loses its edge; a pair labelled "duplicate" gains one (signal `person`).
Groups are then formed again from the edges left. Rows no label touches keep what find gave them: the same
group id (a component's smallest row), size, nearest duplicate and signal, so select decides about them as
before; the rows a label touches say so in the manifest's `person_label`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from dedup.io.labels import Label, Pair
from dedup.search.components import pair_keys

PERSON = "person"


@dataclass
class LabelledGroups:
    groups: pa.Table
    person_label: list[str | None]
    counts: Counter = field(default_factory=Counter)
    apart: np.ndarray | None = None  # the pairs still cut for their relation (a person's duplicate label uncuts one)


def _row_lookup(groups: pa.Table, labels: dict[Pair, Label]):
    shards, keys = groups["shard"].to_pylist(), groups["key"].to_pylist()
    by_sample = {(shard, key): row for row, (shard, key) in enumerate(zip(shards, keys))}
    by_key: dict[str, list[int]] = {}
    if any(not shard for pair in labels for shard, _ in pair):  # a hand-made labels file names keys only
        for row, key in enumerate(keys):
            by_key.setdefault(key, []).append(row)

    def row_of(sample: tuple[str, str]) -> int | None:
        shard, key = sample
        if shard:
            return by_sample.get((shard, key))
        rows = by_key.get(key, [])
        return rows[0] if len(rows) == 1 else None

    return row_of, shards, keys


def with_named_relations(groups: pa.Table, pairs: pa.Table, labels: dict[Pair, Label]) -> tuple[pa.Table, int]:
    """pairs.parquet with the relation a person named in place of find's, for each found pair that has one, and
    how many were renamed."""
    named = {pair: label.relation for pair, label in labels.items() if label.relation is not None}
    if not named:
        return pairs, 0
    row_of, _, _ = _row_lookup(groups, labels)
    index_of = dict(zip(pair_keys(pairs["a"].to_numpy(), pairs["b"].to_numpy()).tolist(), range(len(pairs))))
    relation = pairs["relation"].to_pylist()
    renamed = 0
    for (first, second), name in named.items():
        row_a, row_b = row_of(first), row_of(second)
        if row_a is None or row_b is None or row_a == row_b:
            continue
        index = index_of.get(int(pair_keys(np.array([row_a]), np.array([row_b]))[0]))
        if index is not None and relation[index] != name:
            relation[index] = name
            renamed += 1
    column = pairs.column_names.index("relation")
    return pairs.set_column(column, "relation", pa.array(relation, pa.string())), renamed


def regroup_with_labels(
    groups: pa.Table, pairs: pa.Table, labels: dict[Pair, Label], apart: np.ndarray | None = None
) -> LabelledGroups:
    """groups.parquet as find would have written it had the labelled edges been cut or added, and the edges
    `apart` marks (pairs of a relation not in select.drop_relations) cut unless a person labelled them duplicates."""
    from dedup.search.grouping import connected_groups, nearest_columns
    from dedup.search.signals import SIGNALS, best_partner

    rows = len(groups)
    row_of, shards, keys = _row_lookup(groups, labels)
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    found = set(pair_keys(a, b).tolist())
    apart = np.zeros(len(a), bool) if apart is None else apart.copy()
    apart_edges = dict(zip(pair_keys(a[apart], b[apart]).tolist(), np.flatnonzero(apart).tolist()))
    cut: list[int] = []
    cut_rows: list[tuple[int, int]] = []
    added: list[tuple[int, int, float]] = []
    notes: list[str | None] = [None] * rows
    counts: Counter = Counter()
    for (first, second), label in labels.items():
        if label.duplicate is None:  # a relation named, no verdict: with_named_relations applied it
            continue
        row_a, row_b = row_of(first), row_of(second)
        if row_a is None or row_b is None or row_a == row_b:
            counts["not_in_run"] += 1
            continue
        edge = int(pair_keys(np.array([row_a]), np.array([row_b]))[0])
        if label.duplicate:
            if edge in apart_edges:
                apart[apart_edges.pop(edge)] = False
                counts["relation_overruled"] += 1
            elif edge in found:
                counts["duplicate_already_found"] += 1
                continue
            else:
                added.append((row_a, row_b, np.nan if label.similarity is None else label.similarity))
                counts["duplicate_added"] += 1
        else:
            if edge not in found:
                counts["distinct_not_found"] += 1
                continue
            cut.append(edge)
            cut_rows.append((row_a, row_b))
            counts["distinct_cut"] += 1
        verdict = "a duplicate of" if label.duplicate else "not a duplicate of"
        for row, other in ((row_a, row_b), (row_b, row_a)):
            note = f"a person labelled it {verdict} {shards[other]}:{keys[other]}"
            notes[row] = note if notes[row] is None else f"{notes[row]}; {note}"
    if not cut and not added and not apart.any():
        return LabelledGroups(groups, notes, counts, apart)

    kept = ~np.isin(pair_keys(a, b), np.array(cut, dtype=np.int64)) & ~apart
    found_a, found_b = a[kept], b[kept]
    codes = np.array([SIGNALS.index(s) for s in pairs["signal"].to_pylist()], dtype=np.int8)[kept]
    similarity = pairs["similarity"].to_numpy()[kept]
    person_a = np.array([edge[0] for edge in added], dtype=np.int64)
    person_b = np.array([edge[1] for edge in added], dtype=np.int64)
    person_similarity = np.array([edge[2] for edge in added], dtype=np.float32)

    group_id, group_size = connected_groups(
        rows, np.concatenate([found_a, person_a]), np.concatenate([found_b, person_b])
    )
    for row_a, row_b in cut_rows:
        if group_id[row_a] == group_id[row_b]:
            counts["distinct_still_joined"] += 1
            for row in (row_a, row_b):
                notes[row] = f"{notes[row]} (still joined through other pairs of its group: label those too)"
    # a found edge outranks a person's (its signal and similarity describe the pair); a person's edge names the
    # nearest duplicate of a row that has no other
    person_code = len(SIGNALS)
    nearest, nearest_similarity, nearest_code = best_partner(
        rows,
        np.concatenate([found_a, found_b, person_a, person_b]),
        np.concatenate([found_b, found_a, person_b, person_a]),
        np.concatenate([codes, codes, np.full(2 * len(added), person_code, np.int8)]),
        np.concatenate([similarity, similarity, person_similarity, person_similarity]),
    )
    regrouped = groups
    for name, column in {
        "group_id": pa.array(group_id),
        "group_size": pa.array(group_size.astype(np.int64)),
        **nearest_columns(groups, nearest, nearest_similarity, nearest_code, (*SIGNALS, PERSON)),
    }.items():
        regrouped = regrouped.set_column(regrouped.column_names.index(name), name, column)
    return LabelledGroups(regrouped, notes, counts, apart)
