"""The partitioned search's knobs, one run each: in this process, on vectors in memory, no store and no engine,
so that a change to the algorithm can be weighed alone. Prints seconds (first split; units), similarities
computed a vector, exact joins, and the recall of the planted pairs (every planted copy and its source are
at cosine 0.92-0.99, above the 0.9 threshold). `find_scale.py` measures the stage as users run it.

    .venv/bin/python benchmarks/find_knobs.py --rows 1000000
    .venv/bin/python benchmarks/find_knobs.py --rows 4000000 --neighbours-share 1000000   # 32 neighbours at any P
    .venv/bin/python benchmarks/find_knobs.py --rows 4000000 --max-partitions 1024 --cache /tmp/vectors
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dedup.search import partition_units, partitioned  # noqa: E402
from dedup.tools.planting import planted_embeddings  # noqa: E402


def vectors_for(rows: int, dim: int, cache: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark's clustered vectors (as find_scale.py makes them, one part), from `cache` when there."""
    if cache and (cache / f"vectors-{rows}-{dim}.npy").exists():
        return np.load(cache / f"vectors-{rows}-{dim}.npy"), np.load(cache / f"planted-{rows}-{dim}.npy")
    vectors, planted = planted_embeddings(rows, dim, seed=0, topic_seed=12345, topic_count=max(1, rows // 200))
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
        np.save(cache / f"vectors-{rows}-{dim}.npy", vectors)
        np.save(cache / f"planted-{rows}-{dim}.npy", planted)
    return vectors, planted


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--boundary", type=float, default=partitioned.PartitionSettings.boundary)
    parser.add_argument("--neighbours", type=int, default=partitioned.NEIGHBOURS_LOOKED_AT)
    parser.add_argument("--neighbours-share", type=int, default=partitioned.NEIGHBOURS_SHARE)
    parser.add_argument("--direct-products", type=int, default=partitioned.DIRECT_PRODUCTS)
    parser.add_argument("--small-side", type=int, default=partitioned.SMALL_SIDE, help="0: no batches of small joins")
    parser.add_argument("--max-partitions", type=int, help="cap the partitions a split makes (before sqrt(N): 1024)")
    parser.add_argument("--cache", type=Path, help="folder to keep the generated vectors in between runs")
    args = parser.parse_args()

    partitioned.NEIGHBOURS_LOOKED_AT, partitioned.NEIGHBOURS_SHARE = args.neighbours, args.neighbours_share
    partitioned.DIRECT_PRODUCTS, partitioned.SMALL_SIDE = args.direct_products, args.small_side
    if args.max_partitions:
        uncapped = partitioned.partition_count
        partitioned.partition_count = lambda rows, settings: min(args.max_partitions, uncapped(rows, settings))

    vectors, planted = vectors_for(args.rows, args.dim, args.cache)
    settings = partitioned.PartitionSettings(args.threshold, boundary=args.boundary)
    read = partitioned.as_reader(vectors)
    started = time.perf_counter()
    plans, stats, _ = partition_units.plan_units(read, args.rows, read, args.rows, args.dim, settings, same=True)
    split_seconds = time.perf_counter() - started
    found_a, found_b = [], []
    for plan in plans:
        a, b, unit_stats = partition_units.run_unit(plan, read, read, args.dim, settings, one_source=True, gather=False)
        found_a.append(a)
        found_b.append(b)
        stats.add(unit_stats)
    unit_seconds = time.perf_counter() - started - split_seconds
    a, b = np.concatenate(found_a), np.concatenate(found_b)
    found = np.unique(np.minimum(a, b) * args.rows + np.maximum(a, b))
    wanted = np.minimum(planted[:, 0], planted[:, 1]) * args.rows + np.maximum(planted[:, 0], planted[:, 1])
    print(
        json.dumps(
            {
                "rows": args.rows,
                "boundary": args.boundary,
                "neighbours": args.neighbours,
                "neighbours_share": args.neighbours_share,
                "direct_products": args.direct_products,
                "small_side": args.small_side,
                "max_partitions": args.max_partitions,
                "seconds": round(split_seconds + unit_seconds, 1),
                "first_split_seconds": round(split_seconds, 1),
                "units_seconds": round(unit_seconds, 1),
                "units": len(plans),
                "joins": stats.joins,
                "products_a_vector": round(stats.products / args.rows),
                "timings_s": {step: round(seconds, 1) for step, seconds in stats.timings_s.items()},
                "planted_pair_recall": round(float(np.isin(wanted, found).mean()), 4),
                "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
