"""Invariants of search, grouping and the keep policy, checked on generated inputs (hypothesis)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from conftest import clip_retrieval_store
from hypothesis import given, settings
from hypothesis import strategies as st

from dedup.search import matching
from dedup.search.grouping import connected_groups
from dedup.settings import FindSettings
from dedup.stages.find import find
from dedup.stages.select import decide


def components_by_search(rows, edges):
    """Reference: connected components by repeated graph search, the slow obvious way."""
    neighbours = {i: set() for i in range(rows)}
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    label = {}
    for start in range(rows):
        if start in label:
            continue
        stack, members = [start], []
        label[start] = start
        while stack:
            node = stack.pop()
            members.append(node)
            for other in neighbours[node]:
                if other not in label:
                    label[other] = start
                    stack.append(other)
        smallest = min(members)
        for node in members:
            label[node] = smallest
    return [label[i] for i in range(rows)]


@given(
    st.integers(1, 40).flatmap(
        lambda n: st.tuples(st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=60))
    )
)
@settings(max_examples=200, deadline=None)
def test_groups_equal_connected_components(case):
    rows, edges = case
    a = np.array([e[0] for e in edges], dtype=np.int64)
    b = np.array([e[1] for e in edges], dtype=np.int64)
    group_id, group_size = connected_groups(rows, a, b)
    assert group_id.tolist() == components_by_search(rows, edges)
    assert group_size.tolist() == [group_id.tolist().count(g) for g in group_id.tolist()]


@given(st.lists(st.integers(0, 2**64 - 1), min_size=2, max_size=80), st.integers(0, 10), st.randoms())
@settings(max_examples=100, deadline=None)
def test_phash_search_equals_brute_force(base, radius, rnd):
    hashes = list(base)
    for value in base[:20]:  # add near neighbours so there is something to find
        flipped = value
        for bit in rnd.sample(range(64), rnd.randint(0, 12)):
            flipped ^= 1 << bit
        hashes.append(flipped)
    phash = np.array(hashes, dtype=np.uint64)
    a, b = matching.phash_pairs(phash, radius, np.ones(len(phash), dtype=bool))
    expected = {
        (i, j)
        for i in range(len(hashes))
        for j in range(i + 1, len(hashes))
        if bin(hashes[i] ^ hashes[j]).count("1") <= radius
    }
    assert set(zip(a.tolist(), b.tolist())) == expected


def groups_table(group_ids, widths, captions):
    rows = len(group_ids)
    sizes = [group_ids.count(g) for g in group_ids]
    return pa.table(
        {
            "key": [f"k{i}" for i in range(rows)],
            "shard": ["s"] * rows,
            "shard_index": pa.array([0] * rows, pa.int32()),
            "sample_index": pa.array(list(range(rows)), pa.int32()),
            "group_id": pa.array(group_ids, pa.int64()),
            "group_size": pa.array(sizes, pa.int64()),
            "nearest_key": [None if s == 1 else "k0" for s in sizes],
            "nearest_similarity": pa.array([None if s == 1 else 0.99 for s in sizes], pa.float32()),
            "match": [None if s == 1 else "embedding" for s in sizes],
            "width": pa.array(widths, pa.int32()),
            "height": pa.array(widths, pa.int32()),
            "caption": captions,
        }
    )


@given(
    st.lists(st.tuples(st.integers(0, 6), st.integers(1, 4), st.text(max_size=5)), min_size=1, max_size=40),
    st.sampled_from(["one", "cap:1", "cap:2", "cap:3", "none"]),
)
@settings(max_examples=200, deadline=None)
def test_keep_policy_invariants(rows, policy):
    group_ids = [g for g, _, _ in rows]
    table = groups_table(group_ids, [w * 10 for _, w, _ in rows], [c for _, _, c in rows])
    manifest = decide(table, policy).to_pylist()
    limit = None if policy == "none" else 1 if policy == "one" else int(policy.split(":")[1])
    for group in set(group_ids):
        members = [m for m, g in zip(manifest, group_ids) if g == group]
        kept = [m for m in members if m["status"] == "kept"]
        assert len(kept) >= 1
        if policy == "none":
            assert len(kept) == len(members)
        else:
            assert len(kept) == min(limit, len(members))
        best = max(
            members,
            key=lambda m: (
                table["width"][int(m["key"][1:])].as_py(),
                len(table["caption"][int(m["key"][1:])].as_py()),
                -int(m["key"][1:]),
            ),
        )
        assert best["status"] == "kept" and best["rank"] == 0
        assert all(m["kept_key"] == best["key"] for m in members)


@pytest.mark.slow
def test_ivf_range_search_keeps_recall_on_planted_pairs():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((60_000, 64)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    copies = base[:500] + 0.02 * rng.standard_normal((500, 64)).astype(np.float32)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    vectors = np.vstack([base, copies])
    exact_a, exact_b, _ = matching.embedding_pairs(vectors, 0.9, FindSettings(index="flat"))
    ivf_a, ivf_b, choice = matching.embedding_pairs(vectors, 0.9, FindSettings(index="ivf", nprobe=16))
    assert choice.kind == "ivf"
    exact = set(zip(exact_a.tolist(), exact_b.tolist()))
    assert len(exact) >= 500
    assert len(exact & set(zip(ivf_a.tolist(), ivf_b.tolist()))) / len(exact) >= 0.99


def test_find_reads_clip_retrieval_layout(tmp_path):
    """A folder as clip-retrieval writes it (no dedup files) is a valid input to find."""
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((200, 16)).astype(np.float32)
    vectors[5] = vectors[7] * 1.01
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    (tmp_path / "emb" / "img_emb").mkdir(parents=True)
    (tmp_path / "emb" / "metadata").mkdir()
    np.save(tmp_path / "emb" / "img_emb" / "img_emb_0.npy", vectors)
    pq.write_table(
        pa.table({"image_path": [f"img{i}.jpg" for i in range(200)], "caption": ["c"] * 200}),
        tmp_path / "emb" / "metadata" / "metadata_0.parquet",
    )
    summary = find(tmp_path / "emb", tmp_path, FindSettings(threshold=0.99, phash_radius=None, exact=False))
    assert summary["pairs"] == 1
    groups = pq.read_table(tmp_path / "groups.parquet").to_pylist()
    assert groups[5]["nearest_key"] == "img7.jpg" and groups[5]["group_size"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["clustered", "isotropic"])
def test_partitioned_search_agrees_with_exact_search(kind):
    """Partitioned search finds what exact search finds (recall >= 0.99, every pair real); without the
    routing across partition boundaries (SemDeDup's k-means + intra-cluster search) it would not."""
    from dedup.tools.planting import planted_embeddings

    vectors, _ = planted_embeddings(40_000, dim=64, seed=3, kind=kind)
    exact_a, exact_b, _ = matching.embedding_pairs(vectors, 0.9, FindSettings(index="flat"))
    exact = set(zip(exact_a.tolist(), exact_b.tolist()))
    assert len(exact) >= 400

    def found_with(boundary: float) -> set:
        a, b, choice = matching.embedding_pairs(
            vectors, 0.9, FindSettings(index="partitioned", leaf_size=512, boundary=boundary)
        )
        assert choice.kind == "partitioned"
        return set(zip(a.tolist(), b.tolist()))

    routed, unrouted = found_with(2.0), found_with(0.0)
    assert routed <= exact
    assert len(routed) / len(exact) >= 0.99
    assert len(unrouted) / len(exact) < 0.97


def test_small_joins_in_one_batch_find_what_one_product_each_finds():
    """The joins across borders are mostly a few rows a side: batched (padded and stacked) they give the same
    pairs as a matrix product each, self-joins without their diagonal or a pair twice."""
    from dedup.search import partitioned
    from dedup.tools.planting import planted_embeddings

    vectors, planted = planted_embeddings(4_000, dim=64, seed=5)
    read = partitioned.as_reader(vectors)
    rng = np.random.default_rng(0)
    joins = []
    for source, copy in planted[:300]:  # each join holds a planted pair, among rows of every length up to 64
        q = np.unique(np.append(rng.choice(4_000, rng.integers(0, 64)), source))
        r = np.unique(np.append(rng.choice(4_000, rng.integers(0, 64)), copy))
        joins.append((q, r, False))
        joins.append((np.union1d(q, r), np.union1d(q, r), True))
    batched = set(zip(*(side.tolist() for side in partitioned.batched_matches(read, read, joins, 0.9))))
    one_each = set()
    for q, r, same in joins:
        a, b = partitioned.block_matches(read(q), read(r), 0.9, same)
        one_each |= {(x, y) for x, y in zip(q[a].tolist(), r[b].tolist()) if not same or x < y}
    assert batched == one_each
    assert {(int(a), int(b)) for a, b in planted[:300]} <= batched
    for self_join in joins[1:40:2]:
        a, b = partitioned.batched_matches(read, read, [self_join], 0.9)
        assert len(a) >= 1 and (a < b).all() and len(set(zip(a.tolist(), b.tolist()))) == len(a)


def test_components_from_disk_edges_and_memory_mapped_labels(tmp_path, monkeypatch):
    """The billion-row path: labels memory-mapped on disk, edges streamed from pairs.parquet in small
    batches over several passes; the same components as scipy's."""
    import pyarrow.parquet as pq
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from dedup.search import components

    rng = np.random.default_rng(5)
    rows = 50_000
    a = rng.integers(0, rows, 40_000)
    b = np.where(rng.random(40_000) < 0.5, a + rng.integers(1, 50, 40_000), rng.integers(0, rows, 40_000)) % rows
    pq.write_table(pa.table({"a": a, "b": b}), tmp_path / "pairs.parquet", row_group_size=3_000)
    monkeypatch.setattr(components, "IN_MEMORY_ROWS", 1_000)
    labels = components.component_labels(
        rows, components.parquet_chunks(tmp_path / "pairs.parquet", size=3_000), tmp_path
    )
    assert isinstance(labels, np.memmap)
    _, expected = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(rows, rows)), directed=False)
    smallest = np.full(expected.max() + 1, rows)
    np.minimum.at(smallest, expected, np.arange(rows))
    assert np.array_equal(np.asarray(labels), smallest[expected])


def test_find_over_the_memory_budget_reads_parts_lazily_and_finds_the_same_pairs(tmp_path):
    """A store over find.memory_budget_gb stays memory-mapped (several float16 parts, as clip-retrieval
    writes them) and is read partition by partition; the pairs are those of the in-memory search."""
    import pyarrow.parquet as pq

    from dedup.io.store import EmbeddingStore, RowStack
    from dedup.tools.planting import planted_embeddings

    vectors, _ = planted_embeddings(30_000, dim=32, seed=4)
    clip_retrieval_store(tmp_path / "emb", vectors, 12_000)
    assert isinstance(EmbeddingStore(tmp_path / "emb").load(max_in_memory_bytes=1_000).embeddings, RowStack)
    pairs = {}
    for name, budget in (("memory", 8.0), ("lazy", 1e-6)):
        run = tmp_path / name
        find(
            tmp_path / "emb",
            run,
            FindSettings(exact=False, phash_radius=None, threshold=0.9, index="partitioned", memory_budget_gb=budget),
        )
        table = pq.read_table(run / "pairs.parquet")
        pairs[name] = set(zip(table["a"].to_pylist(), table["b"].to_pylist()))
    assert len(pairs["memory"]) >= 290
    assert pairs["lazy"] == pairs["memory"]


def test_partitioned_units_on_an_engine_find_the_same_pairs_and_resume(tmp_path, monkeypatch):
    """With an engine, the partitioned search's units (plans and pairs on disk) run as engine units: two
    worker processes find exactly the pairs of the in-process search; a unit that fails leaves the others'
    pairs, and the rerun runs only it."""
    import pyarrow.parquet as pq

    from dedup.engine import LocalEngine
    from dedup.errors import DedupError
    from dedup.stages import find_units
    from dedup.tools.planting import planted_embeddings

    vectors, _ = planted_embeddings(30_000, dim=32, seed=4)
    clip_retrieval_store(tmp_path / "emb", vectors, 12_000)
    settings = FindSettings(
        exact=False, phash_radius=None, threshold=0.9, index="partitioned", leaf_size=512, unit_rows=8_000
    )  # several units at this size

    def pairs_of(run) -> set:
        table = pq.read_table(run / "pairs.parquet")
        return set(zip(table["a"].to_pylist(), table["b"].to_pylist()))

    find(tmp_path / "emb", tmp_path / "here", settings)
    expected = pairs_of(tmp_path / "here")
    assert len(expected) >= 290

    find(tmp_path / "emb", tmp_path / "two", settings, engine=LocalEngine(2))
    assert pairs_of(tmp_path / "two") == expected
    assert not (tmp_path / "two" / "find-units").exists()  # removed once find's outputs are written

    original, calls = find_units.search_unit, []

    def third_unit_fails(**kwargs):
        calls.append(kwargs["plan_path"])
        if len(calls) == 3:
            raise RuntimeError("worker lost")
        return original(**kwargs)

    monkeypatch.setattr(find_units, "search_unit", third_unit_fails)
    with pytest.raises(DedupError, match="1 of .* units failed"):
        find(tmp_path / "emb", tmp_path / "resumed", settings, engine=LocalEngine(1))
    units = len(list((tmp_path / "resumed" / "find-units").glob("plan-*.npz")))
    assert units >= 4 and len(list((tmp_path / "resumed" / "find-units").glob("pairs-*.npz"))) == units - 1
    calls.clear()
    find(tmp_path / "emb", tmp_path / "resumed", settings, engine=LocalEngine(1))
    assert len(calls) == 1  # only the failed unit ran again
    assert pairs_of(tmp_path / "resumed") == expected
    # the top split find keeps for `dedup add`: the same in process, on an engine, and from the resumed plans
    kept = [np.load(tmp_path / run / "partitioning.npz") for run in ("here", "two", "resumed")]
    assert len(kept[0]["home"]) == 30_000
    for other in kept[1:]:
        assert all(np.array_equal(kept[0][name], other[name]) for name in kept[0].files)
