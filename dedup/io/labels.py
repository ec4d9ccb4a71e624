"""labels.parquet: a person's decisions about pairs of samples, the file `dedup review` writes and `select` and
`calibrate` read.

One row per pair, the last word kept: keys `a`, `b` (ordered), their shards, `duplicate` (true: the same
image; false: distinct; empty: no verdict), `relation` (what kind of match a person named it, correcting find's:
exact, copy, partial, same_scene or similar; empty: none named), when it was decided, and the similarity and
signal the pair had when it was shown.
The columns a, b, duplicate are the labels format `calibrate --labels` has always read, so a labels file made
by hand (CSV or parquet, without shards) works everywhere this one does.

Every change rewrites the whole file atomically (it is small: one row per decision), so a killed server loses
at most the label it was writing, never the file.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from dedup.io.atomic import read_parquet, write_parquet

LABELS_SCHEMA = pa.schema(
    [
        ("a", pa.string()),  # key
        ("b", pa.string()),
        ("a_shard", pa.string()),
        ("b_shard", pa.string()),
        ("duplicate", pa.bool_()),
        ("relation", pa.string()),
        ("labelled_at", pa.timestamp("ms", tz="UTC")),
        ("similarity", pa.float32()),
        ("signal", pa.string()),  # what found the pair ("near miss" when nothing did)
    ]
)
NAMEABLE = ("exact", "copy", "partial", "same_scene", "similar")  # the relations a person can name a pair
Sample = tuple[str, str]  # (shard, key)
Pair = tuple[Sample, Sample]


def ordered_pair(first: Sample, second: Sample) -> Pair:
    return (first, second) if first <= second else (second, first)


@dataclass(frozen=True)
class Label:
    duplicate: bool | None  # None: a relation named, no verdict
    labelled_at_ms: int
    similarity: float | None = None
    signal: str | None = None
    relation: str | None = None


def read_labels(path: str | Path) -> dict[Pair, Label]:
    """The labels of a labels.parquet, by pair; a pair listed twice keeps its latest row."""
    table = read_parquet(path)
    rows = table.num_rows
    column = lambda name: table[name].to_pylist() if name in table.column_names else [None] * rows
    labels: dict[Pair, Label] = {}
    stamps = table["labelled_at"].cast(pa.int64()).to_pylist() if "labelled_at" in table.column_names else [0] * rows
    for a, b, a_shard, b_shard, duplicate, stamp, similarity, signal, relation in zip(
        column("a"),
        column("b"),
        column("a_shard"),
        column("b_shard"),
        column("duplicate"),
        stamps,
        column("similarity"),
        column("signal"),
        column("relation"),
    ):
        pair = ordered_pair((a_shard or "", str(a)), (b_shard or "", str(b)))
        label = Label(None if duplicate is None else bool(duplicate), int(stamp or 0), similarity, signal, relation)
        if pair not in labels or labels[pair].labelled_at_ms <= label.labelled_at_ms:
            labels[pair] = label
    return labels


def labels_table(labels: dict[Pair, Label]) -> pa.Table:
    pairs = sorted(labels, key=lambda pair: labels[pair].labelled_at_ms)
    return pa.table(
        {
            "a": [pair[0][1] for pair in pairs],
            "b": [pair[1][1] for pair in pairs],
            "a_shard": [pair[0][0] or None for pair in pairs],
            "b_shard": [pair[1][0] or None for pair in pairs],
            "duplicate": [labels[pair].duplicate for pair in pairs],
            "relation": [labels[pair].relation for pair in pairs],
            "labelled_at": pa.array([labels[pair].labelled_at_ms for pair in pairs], pa.int64()).cast(
                LABELS_SCHEMA.field("labelled_at").type
            ),
            "similarity": [labels[pair].similarity for pair in pairs],
            "signal": [labels[pair].signal for pair in pairs],
        },
        schema=LABELS_SCHEMA,
    )


class LabelBook:
    """The labels of one run folder while a person makes them: set, undo, each written through at once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.labels: dict[Pair, Label] = read_labels(self.path) if self.path.exists() else {}
        self._undo: list[tuple[Pair, Label | None]] = []
        self._lock = threading.Lock()
        self._latest = max((label.labelled_at_ms for label in self.labels.values()), default=0)

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, pair: Pair) -> Label | None:
        return self.labels.get(pair)

    def set(
        self,
        pair: Pair,
        duplicate: bool | None,
        similarity: float | None = None,
        signal: str | None = None,
        relation: str | None = None,
    ) -> Label:
        """A verdict (`duplicate`) or a named relation for the pair; the other, if the pair had one, stays."""
        with self._lock:
            # strictly increasing, so that the latest decision is the last word even within a millisecond
            stamp = max(int(time.time() * 1000), self._latest + 1)
            self._latest = stamp
            before = self.labels.get(pair)
            if before is not None:
                duplicate = before.duplicate if duplicate is None else duplicate
                relation = before.relation if relation is None else relation
            label = Label(duplicate, stamp, None if similarity is None else float(similarity), signal, relation)
            self._undo.append((pair, self.labels.get(pair)))
            self.labels[pair] = label
            self._save()
            return label

    def undo(self) -> Pair | None:
        """Take back the latest decision of this session (the pair goes back to what it was); None if none."""
        with self._lock:
            if not self._undo:
                return None
            pair, previous = self._undo.pop()
            if previous is None:
                self.labels.pop(pair, None)
            else:
                self.labels[pair] = previous
            self._save()
            return pair

    def _save(self) -> None:
        write_parquet(self.path, labels_table(self.labels))
