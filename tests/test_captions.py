"""select.diversify_captions: the copies a cap:K policy keeps are written with captions of their own."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
from conftest import FLICKR, run_cli

from dedup.io.reader import iter_shard
from dedup.stages.captions import MEMBER, WORDS, diversified_captions


def test_kept_copies_get_distinct_captions_and_keep_the_original_in_json(tmp_path):
    from dedup.tools.planting import plant

    planted = plant(
        str(FLICKR / "flickr8k-224-00005.tar"), tmp_path / "data", sources=6, copies=4,
        transforms=("exact", "reencode"), limit=200, seed=3,
    )  # fmt: skip
    run_cli(
        "run", tmp_path / "data", "--config", "hashes", "--run-dir", tmp_path / "run",
        "--set", "select.policy=cap:3", "--set", "select.diversify_captions=true",
    )  # fmt: skip
    manifest = pq.read_table(tmp_path / "run" / "manifest.parquet").to_pylist()
    row_of = {row["key"]: row for row in manifest}
    written = {
        s.key: s.files
        for url in sorted((tmp_path / "run" / "shards").glob("*.tar"))
        for s in iter_shard(str(url), on_fault=lambda f: None)
    }
    for group in planted.groups:
        kept = [key for key in group if row_of[key]["status"] == "kept"]
        assert len(kept) == 3  # cap:3 of 5 identical captions
        captions = [written[key]["txt"].decode() for key in kept]
        assert len(set(captions)) == 3, captions  # each kept copy written with a caption of its own
        assert sum(row_of[key]["caption_change"] is not None for key in kept) == 2
        original = next(written[key]["txt"].decode() for key in kept if row_of[key]["caption_change"] is None)
        for key in (key for key in kept if row_of[key]["caption_change"] is not None):
            assert (
                row_of[key]["caption_change"] in (MEMBER, WORDS)
                and row_of[key]["new_caption"] == written[key]["txt"].decode()
            )
            assert json.loads(written[key]["json"])["original_caption"] == original
    unchanged = [row for row in manifest if row["group_size"] == 1]
    assert unchanged and all(row["new_caption"] is None for row in unchanged)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["reconciles"] and summary["written_samples"] == 200 + 6 * 3 - 6


def test_diversify_with_policy_one_says_what_to_use(tmp_path):
    result = run_cli(
        "run", FLICKR / "flickr8k-224-00008.tar", "--config", "hashes", "--run-dir", tmp_path / "run",
        "--set", "select.diversify_captions=true", check=False,
    )  # fmt: skip
    assert result.returncode != 0 and "cap:K" in result.stderr


def test_copies_with_captions_of_their_own_keep_them():
    captions = ["a dog on grass", "a dog on grass", "a brown dog runs", "a puppy in a field", "a cat"]
    new, change = diversified_captions(
        group_ids=[0, 0, 0, 0, 1], ranks=[0, 1, 2, 3, 0], kept=[True, True, True, False, True],
        captions=captions, keys=list("abcde"),
    )  # fmt: skip
    # b repeats a's caption and takes dropped d's (c keeps its own, which no other kept copy has); e is unique
    assert change == [None, MEMBER, None, None, None] and new[1] == "a puppy in a field"
    new, change = diversified_captions([0, 0], [0, 1], [True, True], ["two dogs play", "two dogs play"], ["x", "y"])
    assert change == [None, WORDS] and new[1] != "two dogs play" and len(new[1].split()) == 3
