"""`dedup add`: new shards deduplicated against a finished run. On three planted Flickr8k shards (two in the run,
one added) the groups and the kept set equal those of a run from scratch on all three under the same keep rule;
earlier output shards stay as they were; what a merge takes out of them is listed, not lost."""

from __future__ import annotations

import hashlib
import json
import tarfile

import pyarrow.parquet as pq
import pytest
from conftest import FLICKR, run_cli, shard_head

from dedup.io.labels import LabelBook

HASHES_FIRST = ["--config", "hashes", "--set", "select.prefer=first"]


@pytest.fixture
def planted(planted_flickr_small):
    folder, planted = planted_flickr_small
    return folder, planted.shards


def by_sample(run_dir) -> dict:
    return {(r["shard"], r["key"]): r for r in pq.read_table(run_dir / "manifest.parquet").to_pylist()}


def groups_of(manifest: dict) -> set[frozenset]:
    groups: dict = {}
    for sample, row in manifest.items():
        if row["group_id"] is not None:
            groups.setdefault(row["group_id"], set()).add(sample)
    return {frozenset(members) for members in groups.values()}


def kept_of(manifest: dict) -> set:
    return {sample for sample, row in manifest.items() if row["status"] == "kept"}


def digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def test_add_equals_a_run_from_scratch(planted, tmp_path):
    folder, shards = planted
    base, scratch = tmp_path / "base", tmp_path / "scratch"
    run_cli("run", shards[0], shards[1], "--run-dir", base, *HASHES_FIRST)
    earlier_output = digests(base / "shards")
    added = json.loads(run_cli("add", shards[2], "--run-dir", base, *HASHES_FIRST).stdout)
    run_cli("run", *shards, "--run-dir", scratch, *HASHES_FIRST)

    incremental, from_scratch = by_sample(base), by_sample(scratch)
    assert incremental.keys() == from_scratch.keys()
    assert groups_of(incremental) == groups_of(from_scratch)
    assert len(groups_of(incremental)) < len(incremental)  # there are duplicates, across the increment too
    assert kept_of(incremental) == kept_of(from_scratch)
    assert added["reconciles"] and added["increment"] == 1
    assert added["written_samples"] == added["kept"] == len(kept_of(from_scratch))

    # earlier output untouched; the new shard's kept samples, and only they, in the increment's output
    assert {name: digest for name, digest in digests(base / "shards").items() if "-inc" not in name} == earlier_output
    new_keys = {key for shard, key in kept_of(incremental) if shard == shards[2]}
    written = set()
    for path in (base / "shards").glob("dedup-inc1-*.tar"):
        with tarfile.open(path) as archive:
            written |= {member.name.split(".", 1)[0] for member in archive}
    assert written == new_keys
    assert {row["increment"] for (shard, _), row in incremental.items() if shard == shards[2]} == {1}
    assert {row["increment"] for (shard, _), row in incremental.items() if shard != shards[2]} == {0}
    assert all(row["decided_in"] == 1 for (shard, _), row in incremental.items() if shard == shards[2])
    find = json.loads((base / "find.json").read_text())
    new_rows = sum(1 for shard, _ in incremental if shard == shards[2])
    assert find["increment"]["new_rows"] == new_rows and find["increment"]["pairs_added"] > 0


@pytest.mark.slow
def test_add_with_the_default_detector_keeps_earlier_keeps(planted, tmp_path):
    """The default keep rule prefers the largest copy; an increment keeps what it kept before instead, so the
    kept sets may differ from scratch by those swaps, never in how many or in the groups. From Python, as a
    pipeline calls it (the detector loaded once, not once a command)."""
    from dedup import add, load_settings, run

    def settings(shards: list[str], run_dir):
        chosen = load_settings("default")
        chosen.shards, chosen.run_dir = shards, str(run_dir)
        return chosen

    folder, shards = planted
    base, scratch = tmp_path / "base", tmp_path / "scratch"
    run(settings(shards[:2], base))
    kept_before = kept_of(by_sample(base))
    assert add(settings(shards[2:], base))["increment"] == 1
    run(settings(shards, scratch))
    incremental, from_scratch = by_sample(base), by_sample(scratch)
    assert groups_of(incremental) == groups_of(from_scratch)
    assert len(kept_of(incremental)) == len(kept_of(from_scratch))
    removed = json.loads((base / "shards" / "removals.json").read_text())
    assert kept_before - kept_of(incremental) == {
        (sample_shard, key)
        for (sample_shard, key), row in incremental.items()
        if row["output_shard"] in removed and row["output_key"] in removed[row["output_shard"]]
    }


def test_a_merge_of_earlier_groups_lists_what_leaves_the_earlier_output(planted, tmp_path):
    folder, shards = planted
    base = tmp_path / "base"
    run_cli("run", shards[0], shards[1], "--run-dir", base, *HASHES_FIRST)
    manifest = by_sample(base)
    first, second = sorted(sample for sample, row in manifest.items() if row["group_size"] == 1)[:2]
    LabelBook(base / "labels.parquet").set((first, second), duplicate=True)  # a person joins two kept samples
    added = json.loads(run_cli("add", shards[2], "--run-dir", base, *HASHES_FIRST).stdout)
    after = by_sample(base)
    assert after[first]["status"] == "kept" and after[second]["status"] == "dropped"
    assert after[second]["decided_in"] == 1 and after[first]["decided_in"] == 0
    shard_name = after[second]["output_shard"]
    removed = json.loads((base / "shards" / "removals.json").read_text())
    assert removed == {shard_name: [after[second]["output_key"]]}
    listed = (base / "shards" / shard_name.replace(".tar", ".removed.txt")).read_text().split()
    assert listed == [after[second]["output_key"]]
    assert added["removed_from_earlier_output"] == 1 and added["reconciles"]


def test_add_refuses_what_it_cannot_do(planted, tmp_path):
    folder, shards = planted
    base = tmp_path / "base"
    nothing = run_cli("add", shards[2], "--run-dir", tmp_path / "empty", check=False)
    assert nothing.returncode == 2 and "holds no finished run to add to" in nothing.stderr
    run_cli("run", shards[0], "--run-dir", base, *HASHES_FIRST)
    again = run_cli("add", shards[0], "--run-dir", base, *HASHES_FIRST, check=False)
    assert again.returncode == 2 and "is already in" in again.stderr
    other = run_cli("add", shards[1], "--run-dir", base, *HASHES_FIRST, "--set", "find.phash_radius=8", check=False)
    assert other.returncode == 3 and "find.phash_radius: 4 then, 8 now" in other.stderr


@pytest.mark.slow
def test_a_whole_write_into_an_incremented_output_is_refused(planted, tmp_path):
    folder, shards = planted
    base = tmp_path / "base"
    run_cli("run", shards[0], "--run-dir", base, *HASHES_FIRST)
    run_cli("add", shards[1], "--run-dir", base, *HASHES_FIRST)
    again = run_cli("write", "--run-dir", base, check=False)
    assert again.returncode == 3 and "holds the shards of `dedup add` increments" in again.stderr
    elsewhere = json.loads(run_cli("write", "--run-dir", base, "--out", tmp_path / "fresh").stdout)
    assert elsewhere["reconciles"] and elsewhere["written_samples"] == elsewhere["kept"]


@pytest.mark.slow
def test_add_to_a_run_whose_pairs_lack_newer_evidence_columns(tmp_path, shared):
    """A run folder written before the thumbnails' `dense` evidence existed takes new shards: the earlier pairs are
    read with it NaN, the new ones appended (it crashed on the columns' order before)."""
    from dedup.tools.planting import plant

    plant(str(FLICKR / "flickr8k-224-00000.tar"), tmp_path / "data", sources=10, copies=1, seed=1, limit=150)
    later = shard_head(FLICKR / "flickr8k-224-00001.tar", tmp_path / "later.tar", 150)
    run_cli("run", tmp_path / "data", "--run-dir", tmp_path / "run")
    pairs = pq.read_table(tmp_path / "run" / "pairs.parquet")
    assert len(pairs) >= 10
    pq.write_table(pairs.drop_columns(["dense"]), tmp_path / "run" / "pairs.parquet")
    run_cli("add", later, "--run-dir", tmp_path / "run")
    after = pq.read_table(tmp_path / "run" / "pairs.parquet")
    assert after.column_names == pairs.column_names and len(after) >= len(pairs)
