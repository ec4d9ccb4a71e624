"""Fingerprints of what `dedup run` writes on the acceptance data, to show a refactor changed no output.

Plants copies into three Flickr8k shards and builds the demo shards, runs `dedup run` on both as a user
would (the offline preset, and the demo's), and prints a sha256 for every file a run writes that should
not change: manifest, pairs, groups, output shards, the embeddings store and summary.json (its output
folder taken out); and `dedup purge` of the planted shards against another Flickr8k shard. Tables name their input shards by path, so compare runs made in the same --work folder
(the runs are made afresh each time; the planted data is reused):

    .venv/bin/python benchmarks/output_fingerprint.py --work /tmp/fp --json before.json
    .venv/bin/python benchmarks/output_fingerprint.py --work /tmp/fp --compare before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
FLICKR = ROOT.parent / "shared" / "data" / "flickr8k"
DEDUP = [sys.executable, "-m", "dedup.cli", "--quiet"]
COMPARED = ("manifest.parquet", "pairs.parquet", "groups.parquet")
# write adds these to the manifest (issue 18): the manifest is compared on its other columns, rows and order
ADDED_COLUMNS = ("output_shard", "output_key")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def table_digest(path: Path) -> str:
    """The table's content (schema and rows), apart from the writer's metadata and ADDED_COLUMNS."""
    table = pq.read_table(path)
    table = table.drop_columns([c for c in ADDED_COLUMNS if c in table.column_names])
    return hashlib.sha256(repr((table.schema.remove_metadata(), table.to_pydict())).encode()).hexdigest()


def fingerprint(run_dir: Path, tables: tuple[str, ...] = COMPARED) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in tables:
        if name != "manifest.parquet":  # the manifest's file gained ADDED_COLUMNS
            found[name] = sha256(run_dir / name)
        found[f"{name} rows"] = table_digest(run_dir / name)
    for path in sorted((run_dir / "shards").glob("*.tar")):
        found[f"shards/{path.name}"] = sha256(path)
    for path in sorted((run_dir / "embeddings").rglob("*")):
        if path.is_file() and "stats" not in path.parts:  # stats carry each shard's mtime
            found[str(path.relative_to(run_dir))] = sha256(path)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.pop("seconds", None)
    summary.pop("output_dir", None)
    found["summary.json"] = hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()
    return found


def plant_flickr(out: Path) -> None:
    from dedup.tools.planting import plant

    plant([str(FLICKR / f"flickr8k-224-{i:05d}.tar") for i in range(3)], out, sources=120, copies=(1, 3), seed=7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--json", type=Path, help="Write the fingerprints here.")
    parser.add_argument("--compare", type=Path, help="Fingerprints of an earlier run; exit 1 on any difference.")
    args = parser.parse_args()

    results: dict[str, dict[str, str]] = {}
    for run in ("flickr-run", "purge-run", "demo-run", "demo-data"):
        shutil.rmtree(args.work / run, ignore_errors=True)
    flickr = args.work / "flickr"
    if not (flickr / "planted.json").exists():
        plant_flickr(flickr)
    subprocess.run(
        [
            *DEDUP,
            "run",
            str(flickr),
            "--config",
            str(ROOT / "configs" / "offline.toml"),
            "--run-dir",
            str(args.work / "flickr-run"),
        ],
        check=True,
    )
    results["flickr-offline"] = fingerprint(args.work / "flickr-run")
    subprocess.run(
        [
            *DEDUP,
            "purge",
            str(flickr),
            "--against",
            str(FLICKR / "flickr8k-224-00001.tar"),
            "--config",
            str(ROOT / "configs" / "offline.toml"),
            "--run-dir",
            str(args.work / "purge-run"),
        ],
        check=True,
    )
    results["flickr-purge"] = fingerprint(args.work / "purge-run", tables=("manifest.parquet",))
    subprocess.run([*DEDUP, "demo", str(args.work / "demo-data")], check=True, cwd=args.work)
    subprocess.run(
        [
            *DEDUP,
            "run",
            str(args.work / "demo-data" / "shards"),
            "--config",
            str(ROOT / "configs" / "demo.toml"),
            "--run-dir",
            str(args.work / "demo-run"),
        ],
        check=True,
        cwd=args.work,
    )
    results["demo"] = fingerprint(args.work / "demo-run")

    if args.json:
        args.json.write_text(json.dumps(results, indent=1, sort_keys=True))
    print(json.dumps({run: len(files) for run, files in results.items()}))
    if args.compare:
        before = json.loads(args.compare.read_text())
        differ = [
            f"{run}: {name}"
            for run in sorted(set(before) | set(results))
            for name in sorted(set(before.get(run, {})) | set(results.get(run, {})))
            if before.get(run, {}).get(name) != results.get(run, {}).get(name)
        ]
        print("\n".join(differ) if differ else f"identical: {sum(map(len, results.values()))} fingerprints")
        sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
