"""CIFAR-10 test images with a near-copy in the training set, as `dedup find` sees them over all six shards (issue
31, small images): how many test images it finds, its precision on pairs labelled by eye and on the ciFAIR study's
list, the share of that list it finds, and its largest groups. Dev and held-out apart (the split rule and the
labels: benchmarks/labels/cifar10-test-vs-train.json).

    .venv/bin/dedup embed ../shared/data/cifar10/cifar10-{train-0000{0..4},test-00005}.tar.gz --run-dir RUN
    .venv/bin/dedup find --run-dir RUN
    .venv/bin/python benchmarks/cifar_small.py RUN --out docs/results/relations/cifar10-small.json

A found test image whose pair is in neither list is listed as `unlabelled` (its split is the training image's
CIFAR index, which the keys do not tell), to be looked at and added to the labels.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

LABELS = Path(__file__).parent / "labels" / "cifar10-test-vs-train.json"
TEST_SHARD = "cifar10-test-00005"


def best_training_partner(run_dir: Path) -> dict[str, dict]:
    """Each test image that a pair joins directly to a training image: its most similar such pair."""
    groups = pq.read_table(run_dir / "groups.parquet", columns=["key", "shard"]).to_pylist()
    keys = [row["key"] for row in groups]
    is_test = [TEST_SHARD in row["shard"] for row in groups]
    best: dict[str, dict] = {}
    for pair in pq.read_table(run_dir / "pairs.parquet").to_pylist():
        a, b = pair["a"], pair["b"]
        if is_test[a] == is_test[b]:
            continue
        test, train = (a, b) if is_test[a] else (b, a)
        if keys[test] not in best or pair["similarity"] > best[keys[test]]["similarity"]:
            best[keys[test]] = {**pair, "train_key": keys[train]}
    return best


def purged(run_dir: Path) -> dict[str, dict]:
    """A `dedup purge` run of the test shard against the training shards: each dropped test image's reference."""
    rows = pq.read_table(run_dir / "manifest.parquet").to_pylist()
    return {
        row["key"]: {"train_key": row["reference_key"], "signal": row["reference_match"], "similarity": 0.0}
        for row in rows
        if row["status"] == "dropped"
    }


def largest_groups(run_dir: Path, count: int = 5) -> list[int]:
    sizes = pq.read_table(run_dir / "groups.parquet", columns=["group_id"])["group_id"].to_pylist()
    return sorted(Counter(g for g in sizes if g is not None and g >= 0).values(), reverse=True)[:count]


def measure(run_dir: Path, labels: dict) -> dict:
    by_eye = {(train, test): (same, split) for train, test, same, split in labels["by_eye"]}
    cifair = {test: (train, judgment, split) for test, train, judgment, split in labels["cifair"]}
    is_find = (run_dir / "pairs.parquet").exists()
    found = best_training_partner(run_dir) if is_find else purged(run_dir)
    result: dict = {"largest_groups": largest_groups(run_dir)} if is_find else {}
    labelled: dict[str, tuple[bool, str]] = {}
    unlabelled = []
    for test, pair in found.items():
        train = pair["train_key"]
        if test in cifair:
            labelled[test] = (cifair[test][1] == 1, cifair[test][2])
        elif (train, test) in by_eye:
            labelled[test] = by_eye[(train, test)]
        else:
            unlabelled.append([train, test])
    for part in ("dev", "heldout"):
        counts: Counter = Counter()
        signals: Counter = Counter()
        for test, (same, split) in labelled.items():
            if split != part:
                continue
            pair = found[test]
            counts["same" if same else "two photos"] += 1
            signals[pair["signal"]] += 1
        listed = [test for test, (_, judgment, split) in cifair.items() if judgment == 1 and split == part]
        result[part] = {
            "test_images_found": counts["same"] + counts["two photos"],
            "one_picture": counts["same"],
            "two_photos": counts["two photos"],
            "precision": round(counts["same"] / max(1, counts["same"] + counts["two photos"]), 4),
            "by_signal": dict(signals),
            "cifair_near_duplicates": len(listed),
            "cifair_near_duplicates_found": sum(test in found for test in listed),
        }
    result["test_images_found"] = len(found)
    result["unlabelled"] = unlabelled  # neither list says: look at them, then add them to the labels
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--labels", type=Path, default=LABELS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = measure(args.run_dir, json.loads(args.labels.read_text()))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
