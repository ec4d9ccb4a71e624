"""`dedup add`'s search through the partitioning `find` kept: new rows routed through the run's centroids find the
pairs that involve them, each once, and the kept partitioning grows with every increment."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dedup.io.runfolder import RunFolder
from dedup.io.store import EmbeddingStore
from dedup.search import partition_units
from dedup.search.partitioned import PartitionSettings, as_reader
from dedup.search.routed import KeptPartitioning, routed_matches
from dedup.settings import FindSettings
from dedup.stages.find import find
from dedup.stages.increment import Increment, find_new
from dedup.tools.planting import planted_embeddings

DIM, THRESHOLD = 32, 0.9
# 28 partitions, every one looked at, every row near every border: the partitioned search is exact
EXACT = {"leaf_size": 256, "boundary": 1_000.0}


def vectors_with_copies(rows: int, start: int, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors with planted copies; rows from `start` on also copy earlier rows and each other."""
    vectors, _ = planted_embeddings(rows, DIM, seed=seed, topic_count=rows // 200)
    rng = np.random.default_rng(seed + 1)
    for targets, sources in (
        (rng.choice(np.arange(start, rows), 60, replace=False), rng.choice(start, 60, replace=False)),
        (np.arange(rows - 30, rows), np.arange(rows - 60, rows - 30)),
    ):
        noise = rng.standard_normal((len(targets), DIM)).astype(np.float32) * 0.05
        copies = vectors[sources] + noise
        vectors[targets] = copies / np.linalg.norm(copies, axis=1, keepdims=True)
    return vectors


def pairs_above(vectors: np.ndarray, start: int) -> set[tuple[int, int]]:
    similarity = vectors @ vectors.T
    a, b = np.nonzero(np.triu(similarity >= THRESHOLD, k=1))
    return {(int(x), int(y)) for x, y in zip(a, b) if y >= start}


def kept_of(vectors: np.ndarray, rows: int, settings: PartitionSettings) -> KeptPartitioning:
    read = as_reader(vectors)
    _, _, _, partitioning = partition_units.partitioned_matches(read, rows, read, rows, DIM, settings, same=True)
    assert partitioning is not None
    return KeptPartitioning.of(partitioning, settings)


def test_routed_search_finds_every_pair_with_a_new_row_once():
    rows, start = 8_000, 7_000
    vectors = vectors_with_copies(rows, start)
    settings = PartitionSettings(THRESHOLD, **EXACT)
    kept = kept_of(vectors, start, settings)
    assert len(kept.centroids) == 28 and len(kept.rows.home) == start

    found = routed_matches(as_reader(vectors), rows, kept, DIM, settings)
    across = list(zip(found.across[0].tolist(), found.across[1].tolist()))
    within = list(zip(found.within[0].tolist(), found.within[1].tolist()))
    assert len(set(across)) == len(across) and len(set(within)) == len(within)  # each pair once
    assert all(a < start <= b for a, b in across) and all(start <= a < b for a, b in within)
    expected = pairs_above(vectors, start)
    assert len(expected) > 100
    assert set(across) | set(within) == expected
    assert len(found.new.home) == rows - start


def test_routed_search_at_default_boundary_finds_the_copies():
    rows, start = 8_000, 7_000
    vectors = vectors_with_copies(rows, start, seed=5)
    settings = PartitionSettings(THRESHOLD, leaf_size=64)
    found = routed_matches(as_reader(vectors), rows, kept_of(vectors, start, settings), DIM, settings)
    pairs = set(zip(found.across[0].tolist(), found.across[1].tolist()))
    pairs |= set(zip(found.within[0].tolist(), found.within[1].tolist()))
    expected = pairs_above(vectors, start)
    assert pairs <= expected
    assert len(pairs) >= 0.97 * len(expected)


def write_part(folder, part: int, vectors: np.ndarray, first_key: int) -> None:
    (folder / "img_emb").mkdir(parents=True, exist_ok=True)
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    np.save(folder / "img_emb" / f"img_emb_{part}.npy", vectors.astype(np.float16))
    keys = [f"{first_key + i:06d}" for i in range(len(vectors))]
    pq.write_table(pa.table({"key": keys}), folder / "metadata" / f"metadata_{part}.parquet")


def group_sets(run_dir) -> set[frozenset]:
    table = pq.read_table(run_dir / "groups.parquet", columns=["row", "group_id", "group_size"]).to_pydict()
    groups: dict = {}
    for row, group, size in zip(table["row"], table["group_id"], table["group_size"]):
        if size > 1:
            groups.setdefault(group, set()).add(row)
    return {frozenset(members) for members in groups.values()}


def test_add_through_the_kept_partitioning_equals_find_from_scratch(tmp_path):
    """Two increments on a partitioned run; one killed after it kept its partitioning and run again."""
    bounds = [0, 6_000, 7_000, 8_000]
    vectors = vectors_with_copies(bounds[-1], bounds[1], seed=9)
    store, run = tmp_path / "store", RunFolder(tmp_path / "run")
    settings = FindSettings(
        exact=False, phash_radius=None, pdq_radius=None, verify_threshold=None, low_detail_tolerance=None,
        threshold=THRESHOLD, exact_search_max=1_000, **EXACT,
    )  # fmt: skip
    write_part(store, 0, vectors[: bounds[1]], 0)
    find(store, run.root, settings)
    assert len(KeptPartitioning.load(run.partitioning).rows.home) == bounds[1]

    for number in (1, 2):
        write_part(store, number, vectors[bounds[number] : bounds[number + 1]], bounds[number])
        snapshot = run.increment_snapshot(number)
        snapshot.mkdir(parents=True)
        shutil.copyfile(run.pairs, snapshot / "pairs.parquet")
        increment = Increment(number, [f"part {number}"], bounds[number])
        summary = find_new(store, run, increment, settings)
        assert "routed through it" in summary["index"]["reason"]
        if number == 1:  # killed after the partitioning was kept: run again, it searches the same rows
            first_pairs = pq.read_table(run.pairs)
            find_new(store, run, increment, settings)
            assert pq.read_table(run.pairs).to_pandas().equals(first_pairs.to_pandas())  # NaN evidence equal too
        assert len(KeptPartitioning.load(run.partitioning).rows.home) == bounds[number + 1]

    scratch = tmp_path / "scratch"
    find(store, scratch, settings)
    assert group_sets(run.root) == group_sets(scratch)
    loaded = EmbeddingStore(store).load().embeddings
    expected = pairs_above(np.asarray(loaded, np.float32), 0)
    pairs = pq.read_table(run.pairs, columns=["a", "b"]).to_pydict()
    assert set(zip(pairs["a"], pairs["b"])) == expected


def test_an_unreadable_kept_partitioning_is_no_partitioning(tmp_path):
    broken = tmp_path / "partitioning.npz"
    broken.write_bytes(b"PK\x03\x04 not a whole archive")
    assert KeptPartitioning.load(broken) is None
    assert KeptPartitioning.load(tmp_path / "absent.npz") is None
