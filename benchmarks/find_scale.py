"""Seconds and peak memory of `dedup find` on N x 512 embeddings with planted near-duplicates.

The vectors are random unit vectors (no CLIP weights here) with 1% planted near-copies (cosine ~0.97), so
pair recall is known. Each size runs in a fresh process so its peak RSS is its own.

    .venv/bin/python benchmarks/find_scale.py --sizes 100000 1000000
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_store(folder: Path, rows: int, dim: int, seed: int = 0) -> set:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    planted = rows // 100
    base = rows - planted
    vectors = rng.standard_normal((rows, dim), dtype=np.float32)
    sources = rng.choice(base, planted, replace=False)
    vectors[base:] = vectors[sources] + 0.17 * rng.standard_normal((planted, dim), dtype=np.float32)  # cosine ~0.97
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    np.save(folder / "img_emb" / "img_emb_0.npy", vectors)
    pq.write_table(pa.table({"key": [str(i) for i in range(rows)]}), folder / "metadata" / "metadata_0.parquet")
    return {(int(s), base + i) for i, s in enumerate(sources)}


def run_one(rows: int, dim: int, threshold: float, index: str) -> dict:
    import pyarrow.parquet as pq

    from dedup.settings import FindSettings
    from dedup.stages.find import find

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        truth = make_store(folder / "emb", rows, dim)
        started = time.perf_counter()
        summary = find(folder / "emb", folder, FindSettings(exact=False, phash_radius=None, threshold=threshold, index=index))
        seconds = time.perf_counter() - started
        pairs = pq.read_table(folder / "pairs.parquet")
        found = set(zip(pairs["a"].to_pylist(), pairs["b"].to_pylist()))
    return {
        "rows": rows, "dim": dim, "index": summary["index"]["reason"], "seconds": round(seconds, 2),
        "search_seconds": summary["timings_s"].get("embedding"),
        "planted_pairs": len(truth), "planted_pair_recall": round(len(truth & found) / len(truth), 4),
        "pairs_found": len(found),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--index", default="auto")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.dim, args.threshold, args.index)))
        return
    for rows in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(rows), "--dim", str(args.dim), "--threshold",
                              str(args.threshold), "--index", args.index], capture_output=True, text=True, check=True)
        print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
