"""`dedup add` at scale: the search of an increment of 10 % against a run of N, beside `find` from scratch on all
N + 10 %, and whether the two give the same groups.

Embeddings as in find_scale.py: N x 512 `clustered` unit vectors with 1 % planted copies (part 0, the run), then
an increment of N/10 vectors from the same topics (part 1) of which 1 % are copies of rows of the run (cosine
0.92-0.99) and 1 % copies within the increment. Threshold 0.9, embedding signal only. Each timed step runs in a
fresh process: the run's own `find` (not timed against anything), the increment's search (`find_new`: new rows
against all, merged with the run's pairs, groups formed again) and `find` from scratch on all rows.

    .venv/bin/python benchmarks/add_scale.py --rows 1000000
    .venv/bin/python benchmarks/add_scale.py --rows 1000000 --folder /tmp/addscale   # stores kept, reused
    .venv/bin/python benchmarks/add_scale.py --one add|scratch|floor /tmp/addscale   # one step, alone

`floor` times each part of the increment's search in place, with the joins across borders as their matrix
product only (their rows gathered beforehand, outside the timer): what the increment would cost if gathering
and calling cost nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SETTINGS = {"exact": False, "phash_radius": None, "pdq_radius": None, "threshold": 0.9, "verify_threshold": None}


def write_part(folder: Path, part: int, vectors: np.ndarray, first_key: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "img_emb").mkdir(parents=True, exist_ok=True)
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    np.save(folder / "img_emb" / f"img_emb_{part}.npy", vectors.astype(np.float16))
    keys = [str(first_key + i) for i in range(len(vectors))]
    pq.write_table(pa.table({"key": keys}), folder / "metadata" / f"metadata_{part}.parquet")


def make_stores(folder: Path, rows: int, dim: int = 512) -> None:
    """folder/run: part 0 (N rows); folder/all: parts 0 and 1 (the increment)."""
    from dedup.tools.planting import planted_embeddings

    topics = {"kind": "clustered", "topic_seed": 12345, "topic_count": max(1, rows // 200)}
    base, _ = planted_embeddings(rows, dim, seed=0, **topics)
    new, _ = planted_embeddings(rows // 10, dim, seed=1, **topics)
    rng = np.random.default_rng(7)
    targets = rng.choice(len(new), len(new) // 100, replace=False)
    sources = rng.choice(rows, len(targets), replace=False)
    cosine = rng.uniform(0.92, 0.99, len(targets)).astype(np.float32)[:, None]
    noise = rng.standard_normal((len(targets), dim)).astype(np.float32)
    noise -= (noise * base[sources]).sum(1, keepdims=True) * base[sources]
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    new[targets] = cosine * base[sources] + np.sqrt(1 - cosine**2) * noise
    write_part(folder / "run", 0, base, 0)
    for name in ("img_emb/img_emb_0.npy", "metadata/metadata_0.parquet"):
        (folder / "all" / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "all" / name).symlink_to(folder / "run" / name)
    write_part(folder / "all", 1, new, rows)


def step(mode: str, folder: Path) -> dict:
    from dedup.io.runfolder import RunFolder
    from dedup.settings import FindSettings
    from dedup.stages.find import find
    from dedup.stages.increment import Increment, find_new

    settings = FindSettings(**SETTINGS)
    started = time.perf_counter()
    if mode == "run":
        summary = find(folder / "run", folder / "run-dir", settings)
    elif mode == "scratch":
        summary = find(folder / "all", folder / "scratch-dir", settings)
    else:
        run_dir = folder / "add-dir"
        snapshot = RunFolder(run_dir).increment_snapshot(1)
        snapshot.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / "run-dir" / "pairs.parquet", snapshot / "pairs.parquet")
        shutil.copyfile(folder / "run-dir" / "partitioning.npz", run_dir / "partitioning.npz")
        rows_before = json.loads((folder / "run-dir" / "find.json").read_text())["samples"]
        summary = find_new(folder / "all", RunFolder(run_dir), Increment(1, ["part 1"], rows_before), settings)
    return {
        "mode": mode,
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
        "samples": summary["samples"],
        "pairs": summary["pairs"],
        "groups": summary["groups"],
        "index": (summary.get("index") or {}).get("reason"),
    }


def floor(folder: Path) -> dict:
    """Seconds of each part of `routed_matches` on the benchmark's stores, the joins across borders timed as
    their products alone."""
    from dedup.io.store import EmbeddingStore
    from dedup.search import routed
    from dedup.search.matching import partition_settings
    from dedup.search.partitioned import (
        Buckets,
        as_reader,
        assign,
        block_matches,
        near_buckets,
        reach_of,
    )
    from dedup.settings import FindSettings

    kept = routed.KeptPartitioning.load(folder / "run-dir" / "partitioning.npz")
    assert kept is not None, f"{folder}/run-dir holds no partitioning: run the `run` step first"
    data = EmbeddingStore(folder / "all").load(max_in_memory_bytes=0)

    def read(rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(data.embeddings[rows], dtype=np.float32)

    threshold = SETTINGS["threshold"]
    search_settings = partition_settings(threshold, FindSettings(**SETTINGS))
    parts = ("read_new", "route", "buckets", "read_home", "home", "home_new", "border_products", "border_new_products")
    seconds = dict.fromkeys(parts, 0.0)
    products = {"home": 0, "border": 0}

    def timed(part: str, started: float) -> float:
        now = time.perf_counter()
        seconds[part] += now - started
        return now

    started = time.perf_counter()
    start, partitions = len(kept.rows.home), len(kept.centroids)
    new_rows = np.arange(start, len(data.embeddings), dtype=np.int64)
    new_vectors = read(new_rows)
    started = timed("read_new", started)
    new = assign(as_reader(new_vectors), np.arange(len(new_rows)), kept.centroids, reach_of(search_settings, 512))
    started = timed("route", started)
    earlier_rows = np.arange(start, dtype=np.int64)
    earlier_home, new_home = Buckets(kept.rows.home, earlier_rows, partitions), Buckets(new.home, new_rows, partitions)
    earlier_near, new_near = near_buckets(kept.rows, earlier_rows, partitions), near_buckets(new, new_rows, partitions)
    borders_of = list(routed._borders_by_partition(new_home, new_near, earlier_near, partitions))
    timed("buckets", started)
    for j, borders in borders_of:
        started = time.perf_counter()
        home = earlier_home[j]
        home_vectors = read(home)
        queries = new_vectors[new_home[j] - start]
        started = timed("read_home", started)
        if len(queries) and len(home):
            block_matches(queries, home_vectors, threshold)
            products["home"] += len(queries) * len(home)
        started = timed("home", started)
        if len(queries):
            block_matches(queries, queries, threshold, same=True)
        timed("home_new", started)
        for i in borders:
            query_rows, near = new_near[i * partitions + j], earlier_near[j * partitions + i]
            query_vectors = new_vectors[query_rows - start]
            if len(query_rows) and len(near):
                near_vectors = home_vectors[np.searchsorted(home, near)]
                started = time.perf_counter()
                (query_vectors @ near_vectors.T).max()
                timed("border_products", started)
                products["border"] += len(query_rows) * len(near)
            other = new_near[j * partitions + i]
            if i < j and len(query_rows) and len(other):
                other_vectors = new_vectors[other - start]
                started = time.perf_counter()
                (query_vectors @ other_vectors.T).max()
                timed("border_new_products", started)
    return {
        "mode": "floor",
        "seconds": round(sum(seconds.values()), 2),
        "parts": {part: round(value, 2) for part, value in seconds.items()},
        "products": products,
    }


def group_sets(run_dir: Path) -> set[frozenset]:
    import pyarrow.parquet as pq

    table = pq.read_table(run_dir / "groups.parquet", columns=["row", "group_id", "group_size"])
    groups: dict = {}
    for row, group, size in zip(*(table[c].to_pylist() for c in ("row", "group_id", "group_size"))):
        if size > 1:
            groups.setdefault(group, set()).add(row)
    return {frozenset(members) for members in groups.values()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--folder", type=Path, help="keep the stores here (reused when there already)")
    parser.add_argument("--one", nargs=2, metavar=("STEP", "FOLDER"), help="one step alone: run|add|scratch|floor")
    arguments = parser.parse_args()
    if arguments.one:
        mode, folder = arguments.one[0], Path(arguments.one[1])
        print(json.dumps(floor(folder) if mode == "floor" else step(mode, folder)))
        return
    with tempfile.TemporaryDirectory(prefix="add-scale-") as tmp:
        folder = arguments.folder or Path(tmp)
        started = time.perf_counter()
        if not (folder / "all" / "img_emb" / "img_emb_1.npy").exists():
            make_stores(folder, arguments.rows)
            print(f"stores written in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        results = {}
        for mode in ("run", "add", "scratch"):
            output = subprocess.run(
                [sys.executable, __file__, "--one", mode, str(folder)], capture_output=True, text=True, check=True
            ).stdout
            results[mode] = json.loads(output.strip().splitlines()[-1])
            print(json.dumps(results[mode]), file=sys.stderr)
        incremental, scratch = group_sets(folder / "add-dir"), group_sets(folder / "scratch-dir")
        results["add_over_scratch"] = round(results["add"]["seconds"] / results["scratch"]["seconds"], 3)
        results["groups_equal"] = incremental == scratch
        results["groups_only_in_add"] = len(incremental - scratch)
        results["groups_only_in_scratch"] = len(scratch - incremental)
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
