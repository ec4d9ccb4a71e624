"""How `dedup`'s relations (dedup/search/relations.py) read real and planted duplicates, and what choosing
select.drop_relations does to them (issue 32).

Three measurements, each from run folders made by `dedup run` as a user would:
- `labelled`: the relation of every pair a run found among photos labelled by eye
  (benchmarks/labels/*.json: shard and key of both photos, and the label), as a confusion matrix.
- `planted`: on a planted set with its truth (benchmarks/quality.py builds them: truth.json), the relations of
  the found true pairs by edit, and pair precision and recall of the manifest's groups with each drop set (the
  default, and without same_scene), `dedup select` rerun into a copy of the run folder.
- `verify`: on a verify run folder's planting (RUN_DIR/data/planted.json), the relations of the true pairs by
  edit (template copies among them).

    .venv/bin/python benchmarks/relations.py labelled RUN_DIR benchmarks/labels/flickr8k-relations.json
    .venv/bin/python benchmarks/relations.py planted RUN_DIR /tmp/quality/hard2-heldout-1000-2000/truth.json
    .venv/bin/python benchmarks/relations.py verify RUN_DIR PLANTED_JSON
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path

import pyarrow.parquet as pq

RELATIONS = ("exact", "copy", "partial", "same_scene", "similar", "unknown")
WITHOUT_SAME_SCENE = '["exact", "copy", "partial", "similar", "unknown"]'


def found_pairs(run_dir: Path) -> list[tuple[str, str, str]]:
    """(key a, key b, relation) of each pair of the run."""
    keys = pq.read_table(run_dir / "groups.parquet", columns=["key"])["key"].to_pylist()
    pairs = pq.read_table(run_dir / "pairs.parquet", columns=["a", "b", "relation"]).to_pylist()
    return [(keys[p["a"]], keys[p["b"]], p["relation"]) for p in pairs]


def labelled(run_dir: Path, labels_file: Path) -> dict:
    label_of = {frozenset((a, b)): label for _, a, _, b, label in json.loads(labels_file.read_text())["pairs"]}
    confusion: dict[str, Counter] = defaultdict(Counter)
    for a, b, relation in found_pairs(run_dir):
        confusion[label_of.get(frozenset((a, b)), "not labelled")][relation] += 1
    return {label: dict(counts) for label, counts in sorted(confusion.items())}


def planted_edit(truth: dict, a: str, b: str) -> str | None:
    """The edit a true pair shows (`copy~copy` for two edited copies of one source); None for a false pair."""
    first, second = truth.get(a), truth.get(b)
    if not first or not second or first["group"] != second["group"]:
        return None
    if "source" in (first["edit"], second["edit"]):
        return second["edit"] if first["edit"] == "source" else first["edit"]
    return "copy~copy"


def manifest_pairs(run_dir: Path) -> set[frozenset]:
    manifest = pq.read_table(run_dir / "manifest.parquet", columns=["key", "group_id", "group_size"]).to_pylist()
    members: dict[int, list[str]] = defaultdict(list)
    for row in manifest:
        if row["group_size"] and row["group_size"] > 1:
            members[row["group_id"]].append(row["key"])
    return {frozenset(pair) for keys in members.values() for pair in combinations(keys, 2)}


def scored(predicted: set[frozenset], truth: dict) -> dict:
    groups: dict[str, list[str]] = defaultdict(list)
    for key, entry in truth.items():
        groups[entry["group"]].append(key)
    true = {frozenset(pair) for keys in groups.values() for pair in combinations(keys, 2)}
    hits = len(predicted & true)
    return {
        "precision": round(hits / max(1, len(predicted)), 4),
        "recall": round(hits / max(1, len(true)), 4),
        "true_pairs": len(true),
    }


def planted(run_dir: Path, truth_file: Path) -> dict:
    truth = json.loads(truth_file.read_text())
    by_edit: dict[str, Counter] = defaultdict(Counter)
    for a, b, relation in found_pairs(run_dir):
        by_edit[planted_edit(truth, a, b) or "false pair"][relation] += 1
    true_pairs = sum(sum(c.values()) for edit, c in by_edit.items() if edit != "false pair")
    copy_like = sum(c[r] for edit, c in by_edit.items() if edit != "false pair" for r in ("exact", "copy", "partial"))
    result = {
        "by_edit": {edit: dict(counts) for edit, counts in sorted(by_edit.items())},
        "true_pairs_exact_copy_or_partial": round(copy_like / max(1, true_pairs), 4),
        "default": scored(manifest_pairs(run_dir), truth),
    }
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "run"
        shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("shards", "embeddings", "increments"))
        command = [sys.executable, "-m", "dedup.cli", "--quiet", "select", "--run-dir", str(copy), "--embeddings"]
        command += [str(run_dir / "embeddings"), "--set", f"select.drop_relations={WITHOUT_SAME_SCENE}"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        result["without_same_scene"] = scored(manifest_pairs(copy), truth)
    return result


def verify(run_dir: Path, planted_file: Path) -> dict:
    record = json.loads(planted_file.read_text())
    truth = {
        key: {"group": group[0], "edit": record["transforms"].get(key, "source")}
        for group in record["groups"]
        for key in group
    }
    by_edit: dict[str, Counter] = defaultdict(Counter)
    for a, b, relation in found_pairs(run_dir):
        by_edit[planted_edit(truth, a, b) or "false pair"][relation] += 1
    return {edit: dict(counts) for edit, counts in sorted(by_edit.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("labelled", "planted", "verify"))
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("truth", type=Path, help="The labels, truth.json or planted.json.")
    args = parser.parse_args()
    measure = {"labelled": labelled, "planted": planted, "verify": verify}[args.kind]
    print(json.dumps(measure(args.run_dir, args.truth), indent=1))


if __name__ == "__main__":
    main()
