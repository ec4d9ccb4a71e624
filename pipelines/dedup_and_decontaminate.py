"""Deduplicate a training set, then remove near-copies of an evaluation set, then report.

    embed -> find -> select -> purge (against the eval set) -> write -> report

Runs offline on the shared data: CIFAR-10's training shards as the corpus, its test shard as the eval set.

    .venv/bin/python pipelines/dedup_and_decontaminate.py --run-dir runs/cifar-decontaminated
    .venv/bin/python pipelines/dedup_and_decontaminate.py data/{00000..00099}.tar --eval eval/ --config configs/default.toml
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dedup import embed, find, load_settings, select, write
from dedup.progress import Reporter
from dedup.stages.purge import purge
from dedup.tools.report import build_report

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def pipeline(train: list[str], eval_set: list[str], run_dir: Path, config: str, reporter: Reporter) -> dict:
    settings = load_settings(config)
    store, reference = run_dir / "embeddings", run_dir / "reference"
    embed(train, store, settings.embed, reporter=reporter)
    find(store, run_dir, settings.find, reporter=reporter)
    select(store, run_dir, settings.select, reporter=reporter)
    embed(eval_set, reference, settings.embed, reporter=reporter)
    purged = purge(store, reference, run_dir, settings.find, reporter=reporter)
    summary = write(store, run_dir, run_dir / "shards", settings.write, reporter=reporter)
    report = build_report(run_dir)
    return {"purge": purged, "summary": summary, "report": str(report)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train", nargs="*", default=[str(SHARED / "cifar10-train-{00000..00004}.tar.gz")])
    parser.add_argument("--eval", nargs="+", default=[str(SHARED / "cifar10-test-00005.tar.gz")])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/dedup-and-decontaminate"))
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "offline.toml"))
    args = parser.parse_args()
    result = pipeline(args.train, args.eval, args.run_dir, args.config, Reporter())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
