"""What `dedup review` pages through, computed once when it starts: the run's pairs in the order a person should
look at them, and its duplicate groups largest first.

The pairs are those find found (the edges of the groups) and near misses just below the threshold, found among
a random sample of rows (as the report's bands are): a person cuts a wrong edge among the first and joins a missed
duplicate among the second. They are ordered by how far their cosine similarity lies from the threshold,
closest first. Every array is in that order, so a page with any filter is a mask and a slice.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dedup.errors import InputError
from dedup.io.atomic import read_parquet
from dedup.io.labels import LabelBook, Pair, ordered_pair
from dedup.io.runfolder import RunFolder, read_stage_table
from dedup.search.components import pair_keys
from dedup.search.relations import EVIDENCE_COLUMNS, with_relations
from dedup.settings.run import RELATIONS

NEAR_MISS = "near miss"
GROUP_COLUMNS = ["key", "shard", "shard_index", "sample_index", "group_id", "group_size", "caption", "width", "height"]


@dataclass
class PairFilter:
    signal: str | None = None
    relation: str | None = None
    low: float | None = None
    high: float | None = None
    unlabelled: bool = False
    group: int | None = None


def sample_rows(rows: int, sample: int, seed: int, block: int = 1_000) -> np.ndarray:
    """`sample` of `rows` in blocks of consecutive rows at random places: a block is one sequential read of a
    memory-mapped store, where scattered rows would page in (and keep resident) most of it."""
    if sample >= rows:
        return np.arange(rows)
    blocks = rows // block
    chosen = np.random.default_rng(seed).choice(blocks, max(1, sample // block), replace=False)
    return np.sort((chosen[:, None] * block + np.arange(block)).ravel())


def near_misses(folder: RunFolder, embeddings, threshold: float | None, sample: int, seed: int = 0):
    """Rows a, b and similarity of pairs up to 0.08 below the threshold among `sample` rows of the store;
    none when the run has no embeddings to search (a hash-only store, or none at all). Only the sampled rows
    are read."""
    from dedup.io.store import EmbeddingStore, RowStack
    from dedup.search import matching
    from dedup.search.signals import cosine
    from dedup.settings import FindSettings
    from dedup.tools.report import similarity_bands

    store = EmbeddingStore(embeddings or folder.embeddings)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    if threshold is None or sample <= 1 or not (store.root / "img_emb").is_dir() or not store.parts():
        return empty
    stored = RowStack([np.load(store.emb_path(part), mmap_mode="r") for part in store.parts()])
    rows = sample_rows(len(stored), sample, seed)
    vectors = np.ascontiguousarray(stored[rows], dtype=np.float32)
    lowest = similarity_bands(threshold)[0][0]
    a, b, _ = matching.embedding_pairs(vectors, lowest, FindSettings(phash_radius=None))
    similarity = cosine(vectors, vectors, a, b)
    below = similarity < threshold
    return rows[a[below]].astype(np.int64), rows[b[below]].astype(np.int64), similarity[below].astype(np.float32)


def recorded_spans(store_dir) -> np.ndarray | None:
    """(start, end) in its shard of each row's sample, as embed recorded them (-1 where it did not: a shard that is
    not a plain local tar, or a folder entry inside the sample); None without a store."""
    from dedup.io.store import EmbeddingStore

    store = EmbeddingStore(store_dir)
    if not (store.root / "img_emb").is_dir():
        return None
    pieces = []
    for part in store.parts():
        metadata = read_parquet(store.metadata_path(part), ["sample_index"])
        rows = len(metadata)
        spans = np.full((rows, 2), -1, dtype=np.int64)
        path = store.spans_path(part)
        if path.exists() and "sample_index" in metadata.column_names:
            recorded = np.load(path)
            if len(recorded) == rows and np.array_equal(recorded[:, 0], metadata["sample_index"].to_numpy()):
                spans = recorded[:, 1:3].copy()
        pieces.append(spans)
    return np.concatenate(pieces) if pieces else None


def read_groups(folder: RunFolder) -> pa.Table:
    """groups.parquet's columns the app shows, shard paths as a dictionary (a few distinct, a million rows)."""
    import pyarrow.parquet as pq

    read_stage_table(folder.groups, "find", ["row"])  # the message that names the stage to run, if it is missing
    with pq.ParquetFile(folder.groups, read_dictionary=["shard"]) as parquet:
        present = [c for c in GROUP_COLUMNS if c in parquet.schema_arrow.names]
        return parquet.read(columns=present)


class ReviewData:
    """A run's pairs and groups, paged; the labels of its LabelBook marked on the pairs."""

    def __init__(self, folder: RunFolder, book: LabelBook, embeddings=None, near_miss_sample: int = 20_000):
        self.folder, self.book = folder, book
        self.groups = read_groups(folder)
        pairs = with_relations(read_stage_table(folder.pairs, "find"))
        find_info = json.loads(folder.find_summary.read_text()) if folder.find_summary.exists() else {}
        self.threshold: float | None = (find_info.get("settings") or {}).get("threshold")
        self.rows = len(self.groups)
        self._lock = threading.Lock()

        found_a, found_b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
        miss_a, miss_b, miss_similarity = near_misses(folder, embeddings, self.threshold, near_miss_sample)
        fresh = ~np.isin(pair_keys(miss_a, miss_b), pair_keys(found_a, found_b))
        miss_a, miss_b, miss_similarity = miss_a[fresh], miss_b[fresh], miss_similarity[fresh]
        self.signal_names = sorted(set(pairs["signal"].to_pylist())) + [NEAR_MISS]
        found_codes = np.array([self.signal_names.index(s) for s in pairs["signal"].to_pylist()], np.int8)
        a = np.concatenate([found_a, miss_a]).astype(np.int64)
        b = np.concatenate([found_b, miss_b]).astype(np.int64)
        similarity = np.concatenate([pairs["similarity"].to_numpy(), miss_similarity]).astype(np.float32)
        codes = np.concatenate([found_codes, np.full(len(miss_a), len(self.signal_names) - 1, np.int8)])
        hamming = np.concatenate([pairs["hamming"].to_numpy(), np.full(len(miss_a), -1, np.int32)])
        inliers = np.concatenate([pairs["inliers"].to_numpy(), np.full(len(miss_a), -1, np.int32)])
        self.relation_names = [name for name in RELATIONS if name in set(pairs["relation"].to_pylist())]
        relation = np.concatenate(
            [
                np.array([RELATIONS.index(name) for name in pairs["relation"].to_pylist()], np.int8),
                np.full(len(miss_a), -1, np.int8),  # a near miss was not found: no relation
            ]
        )
        evidence = np.full((len(a), len(EVIDENCE_COLUMNS)), np.nan, np.float32)
        for column, name in enumerate(EVIDENCE_COLUMNS):
            evidence[: len(found_a), column] = pairs[name].to_numpy(zero_copy_only=False)

        distance = np.abs(similarity - self.threshold) if self.threshold is not None else similarity.copy()
        order = np.lexsort((pair_keys(a, b), np.nan_to_num(distance, nan=np.inf)))
        self.a, self.b, self.similarity = a[order], b[order], similarity[order]
        self.codes, self.hamming, self.inliers = codes[order], hamming[order], inliers[order]
        self.relation, self.evidence = relation[order], evidence[order]
        self.found_pairs = len(found_a)
        packed = pair_keys(self.a, self.b)
        self._by_packed = np.argsort(packed, kind="stable")
        self._packed_sorted = packed[self._by_packed]
        self.labelled = np.zeros(len(self.a), dtype=bool)
        self.labels_elsewhere = 0
        self._mark_existing_labels()

        self.group_id = self.groups["group_id"].to_numpy()
        self.status = self._statuses()
        spans = recorded_spans(embeddings or folder.embeddings)
        self.spans = spans if spans is not None and len(spans) == self.rows else None
        sizes = self.groups["group_size"].to_numpy()
        in_groups = np.flatnonzero(sizes > 1)
        ids, first = np.unique(self.group_id[in_groups], return_index=True)
        group_sizes = sizes[in_groups][first]
        self.group_ids = ids[np.lexsort((ids, -group_sizes))]
        self.group_sizes = dict(zip(ids.tolist(), group_sizes.tolist()))
        self._members = in_groups[np.argsort(self.group_id[in_groups], kind="stable")]
        self._member_groups = self.group_id[self._members]

    def span(self, row: int) -> tuple[int, int] | None:
        """Where the row's sample lies in its shard, if embed recorded it."""
        if self.spans is None or self.spans[row, 0] < 0:
            return None
        return int(self.spans[row, 0]), int(self.spans[row, 1])

    def place(self, row: int) -> tuple[str, int, tuple[int, int] | None]:
        """(shard, sample index, span): where to read the row's image (review/images.py)."""
        return self.groups["shard"][row].as_py(), self.groups["sample_index"][row].as_py(), self.span(row)

    # -- identities
    def sample(self, row: int) -> tuple[str, str]:
        return (self.groups["shard"][row].as_py() or "", self.groups["key"][row].as_py())

    def pair_identity(self, pair: int) -> Pair:
        return ordered_pair(self.sample(int(self.a[pair])), self.sample(int(self.b[pair])))

    def pair_of_rows(self, row_a: int, row_b: int) -> int | None:
        """The queue position of the pair of these two rows, if the queue has it."""
        key = int(pair_keys(np.array([row_a]), np.array([row_b]))[0])
        at = int(np.searchsorted(self._packed_sorted, key))
        if at < len(self._packed_sorted) and self._packed_sorted[at] == key:
            return int(self._by_packed[at])
        return None

    def rows_of(self, samples: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """Rows of the named samples that the run has (one pass over the keys, not a dictionary of them all)."""
        if not samples:
            return {}
        keys = pa.array(sorted({key for _, key in samples}), pa.string())
        rows = np.flatnonzero(pc.is_in(self.groups["key"], value_set=keys).to_numpy(zero_copy_only=False))
        found = {self.sample(int(row)): int(row) for row in rows}
        return {sample: found[sample] for sample in samples if sample in found}

    def _mark_existing_labels(self) -> None:
        labels = list(self.book.labels)
        rows = self.rows_of({sample for pair in labels for sample in pair})
        for first, second in labels:
            pair = self.pair_of_rows(rows[first], rows[second]) if first in rows and second in rows else None
            if pair is None:
                self.labels_elsewhere += 1
            else:
                self.labelled[pair] = True

    def _statuses(self) -> tuple[np.ndarray, list[str]] | None:
        """Each row's decision in manifest.parquet as a code into the list of decisions (-1: none), if select
        has run."""
        if not self.folder.manifest.exists():
            return None
        manifest = read_parquet(self.folder.manifest, ["shard_index", "sample_index", "status"])
        if not len(manifest):
            return None

        def place(table: pa.Table) -> np.ndarray:
            shard = table["shard_index"].to_numpy().astype(np.int64)
            return shard * (1 << 32) + table["sample_index"].to_numpy().astype(np.int64)

        manifest_places, row_places = place(manifest), place(self.groups)
        order = np.argsort(manifest_places)
        at = np.clip(np.searchsorted(manifest_places[order], row_places), 0, len(order) - 1)
        encoded = pc.dictionary_encode(manifest["status"]).combine_chunks()
        codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int8)[order][at]
        codes[manifest_places[order][at] != row_places] = -1
        return codes, encoded.dictionary.to_pylist()

    def status_of(self, row: int) -> str | None:
        if self.status is None or self.status[0][row] < 0:
            return None
        return self.status[1][self.status[0][row]]

    # -- pages
    def filtered(self, chosen: PairFilter) -> np.ndarray:
        mask = np.ones(len(self.a), dtype=bool)
        if chosen.signal is not None:
            if chosen.signal not in self.signal_names:
                return np.zeros(0, np.int64)
            mask &= self.codes == self.signal_names.index(chosen.signal)
        if chosen.relation is not None:
            if chosen.relation not in RELATIONS:
                return np.zeros(0, np.int64)
            mask &= self.relation == RELATIONS.index(chosen.relation)
        if chosen.low is not None:
            mask &= self.similarity >= chosen.low
        if chosen.high is not None:
            mask &= self.similarity < chosen.high
        if chosen.unlabelled:
            mask &= ~self.labelled
        if chosen.group is not None:
            mask &= (self.group_id[self.a] == chosen.group) | (self.group_id[self.b] == chosen.group)
        return np.flatnonzero(mask)

    def row_record(self, row: int) -> dict:
        record = self.groups.slice(row, 1).to_pylist()[0]
        record["row"] = row
        record["shard_name"] = (record["shard"] or "").rstrip("/").rsplit("/", 1)[-1]
        record["status"] = self.status_of(row)
        return record

    def pair_record(self, pair: int) -> dict:
        label = self.book.get(self.pair_identity(pair))
        similarity = float(self.similarity[pair])
        return {
            "id": pair,
            "similarity": None if np.isnan(similarity) else round(similarity, 4),
            "signal": self.signal_names[self.codes[pair]],
            "hamming": int(self.hamming[pair]),
            "inliers": int(self.inliers[pair]),
            "relation": RELATIONS[self.relation[pair]] if self.relation[pair] >= 0 else None,
            "evidence": {
                name: round(float(value), 3)
                for name, value in zip(EVIDENCE_COLUMNS, self.evidence[pair])
                if not np.isnan(value)
            },
            "label": None
            if label is None or label.duplicate is None
            else ("duplicate" if label.duplicate else "distinct"),
            "named_relation": None if label is None else label.relation,
            "a": self.row_record(int(self.a[pair])),
            "b": self.row_record(int(self.b[pair])),
        }

    def pairs_page(self, chosen: PairFilter, offset: int, limit: int) -> dict:
        matching = self.filtered(chosen)
        page = matching[offset : offset + limit]
        return {"total": len(matching), "offset": offset, "pairs": [self.pair_record(int(p)) for p in page]}

    def groups_page(self, offset: int, limit: int, members: int = 12) -> dict:
        page = self.group_ids[offset : offset + limit]
        groups = []
        for group in page.tolist():
            start, stop = np.searchsorted(self._member_groups, [group, group + 1])
            rows = self._members[start:stop]
            records = [self.row_record(int(row)) for row in rows]
            records.sort(key=lambda r: (r["status"] != "kept", r["row"]))
            groups.append({"group_id": group, "size": self.group_sizes[group], "members": records[:members]})
        return {"total": len(self.group_ids), "offset": offset, "groups": groups}

    # -- labelling
    def label(self, pair: int, duplicate: bool | None, relation: str | None = None) -> dict:
        """A person's verdict on a pair, or the relation they name it (NAMEABLE), correcting find's."""
        if not 0 <= pair < len(self.a):
            raise InputError(f"no pair {pair} in this run's review")
        with self._lock:
            similarity = float(self.similarity[pair])
            identity, signal = self.pair_identity(pair), self.signal_names[self.codes[pair]]
            self.book.set(identity, duplicate, similarity, signal, relation)
            self.labelled[pair] = True
        return self.pair_record(pair)

    def undo(self) -> dict | None:
        with self._lock:
            undone = self.book.undo()
            if undone is None:
                return None
            rows = self.rows_of(set(undone))
            first, second = undone
            pair = self.pair_of_rows(rows[first], rows[second]) if first in rows and second in rows else None
            if pair is None:
                return None
            self.labelled[pair] = self.book.get(undone) is not None
        return self.pair_record(pair)

    def summary(self) -> dict:
        return {
            "run": str(self.folder.root),
            "samples": self.rows,
            "threshold": self.threshold,
            "pairs": len(self.a),
            "found_pairs": self.found_pairs,
            "near_misses": len(self.a) - self.found_pairs,
            "groups": len(self.group_ids),
            "labelled": len(self.book),
            "labels_elsewhere": self.labels_elsewhere,
            "signals": self.signal_names,
            "relations": self.relation_names,
            "bands": self.bands(),
        }

    def bands(self) -> list[list[float]]:
        if self.threshold is None:
            return []
        from dedup.tools.report import similarity_bands

        return [[round(low, 4), round(high, 4)] for low, high in similarity_bands(self.threshold)]
