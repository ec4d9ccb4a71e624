"""`find` at scale: seconds, peak memory and pair recall against exact search, side by side with the
baselines users would pick: faiss exact search (flat), faiss IVF, and SemDeDup's k-means + intra-cluster
search (our partitioned search without routing across partition boundaries: boundary 0, one level).

Embeddings: N x 512 unit vectors (no CLIP weights here), `clustered` like image embeddings or `isotropic`
(no structure, the hardest case), written as a clip-retrieval store in float16 parts of 1M rows; 1% of rows
are planted copies at cosine 0.92-0.99. Recall: every pair at or above the threshold that exact search finds
for a sample of queries (`--sample` planted copies and as many random rows, against all N), and the fraction of
those that the method found. Each run is a fresh process, so its peak RSS is its own.

    .venv/bin/python benchmarks/find_scale.py --sizes 10000 100000 1000000 --methods partitioned semdedup
    .venv/bin/python benchmarks/find_scale.py --sizes 100000 --methods flat ivf
    .venv/bin/python benchmarks/find_scale.py --sizes 10000000 --methods partitioned --sample 1000
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
PART_ROWS = 1_000_000
METHODS = {
    "partitioned": {"index": "partitioned"},
    "semdedup": {"index": "partitioned", "boundary": 0.0, "leaf_size": 1_024},
    "flat": {"index": "flat", "memory_budget_gb": 20.0},
    "ivf": {"index": "ivf", "memory_budget_gb": 20.0},
}


def make_store(folder: Path, rows: int, dim: int, kind: str) -> np.ndarray:
    """Write the store part by part; returns the planted copies' rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dedup.tools.planting import planted_embeddings

    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    copies = []
    for part, start in enumerate(range(0, rows, PART_ROWS)):
        count = min(rows, start + PART_ROWS) - start
        vectors, pairs = planted_embeddings(
            count, dim, seed=part, kind=kind, topic_seed=12345, topic_count=max(1, rows // 200)
        )
        np.save(folder / "img_emb" / f"img_emb_{part}.npy", vectors.astype(np.float16))
        pq.write_table(
            pa.table({"key": [str(start + i) for i in range(count)]}), folder / "metadata" / f"metadata_{part}.parquet"
        )
        copies.append(pairs[:, 1] + start)
    return np.concatenate(copies)


def exact_sample_pairs(store: Path, sample: np.ndarray, threshold: float) -> set:
    """Every pair at or above `threshold` that involves a sampled row, by brute force against all rows."""
    from dedup.io.store import EmbeddingStore

    vectors = EmbeddingStore(store).load(max_in_memory_bytes=0).embeddings
    queries = vectors[sample]
    found = set()
    for start in range(0, len(vectors), 262_144):
        block = vectors[start : start + 262_144]
        q, r = np.nonzero(queries @ block.T >= threshold)
        for a, b in zip(sample[q].tolist(), (r + start).tolist()):
            if a != b:
                found.add((min(a, b), max(a, b)))
    return found


def run_one(
    rows: int, dim: int, threshold: float, method: str, kind: str, sample_size: int = 2_000, workers: int = 1
) -> dict:
    import pyarrow.parquet as pq

    from dedup.engine import LocalEngine
    from dedup.settings import FindSettings
    from dedup.stages.find import find

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        copies = make_store(folder / "emb", rows, dim, kind)
        rng = np.random.default_rng(0)
        sample = np.unique(
            np.concatenate(
                [
                    rng.choice(copies, min(sample_size, len(copies)), replace=False),
                    rng.choice(rows, min(sample_size, rows), replace=False),
                ]
            )
        )
        settings = FindSettings(exact=False, phash_radius=None, threshold=threshold, **METHODS[method])
        started = time.perf_counter()
        summary = find(folder / "emb", folder, settings, engine=LocalEngine(workers))  # as `dedup find` runs it
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        pairs = pq.read_table(folder / "pairs.parquet")
        found = set(zip(pairs["a"].to_pylist(), pairs["b"].to_pylist()))
        truth = exact_sample_pairs(folder / "emb", sample, threshold)
    return {
        "rows": rows,
        "kind": kind,
        "method": method,
        "seconds": round(seconds, 1),
        "search_seconds": summary["timings_s"].get("embedding"),
        "peak_rss_gib": round(peak, 2),
        "sampled_exact_pairs": len(truth),
        "pair_recall": round(len(truth & found) / max(len(truth), 1), 4),
        "pairs_found": len(found),
        "index": summary["index"]["reason"],
        "workers": workers,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--methods", nargs="+", default=["partitioned", "semdedup"], choices=sorted(METHODS))
    parser.add_argument("--kinds", nargs="+", default=["clustered"], choices=["clustered", "isotropic"])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument(
        "--sample", type=int, default=2_000, help="planted copies and random rows checked by brute force"
    )
    parser.add_argument("--workers", type=int, default=1, help="partitioned search: units at once (find.workers)")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        rows, method, kind = args.one
        print(json.dumps(run_one(int(rows), args.dim, args.threshold, method, kind, args.sample, args.workers)))
        return
    for kind in args.kinds:
        for rows in args.sizes:
            for method in args.methods:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--one",
                        str(rows),
                        method,
                        kind,
                        "--dim",
                        str(args.dim),
                        "--threshold",
                        str(args.threshold),
                        "--sample",
                        str(args.sample),
                        "--workers",
                        str(args.workers),
                    ],
                    capture_output=True,
                    text=True,
                )
                if out.returncode != 0:
                    print(
                        json.dumps(
                            {"rows": rows, "kind": kind, "method": method, "error": out.stderr.strip().splitlines()[-1]}
                        ),
                        flush=True,
                    )
                    continue
                print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
