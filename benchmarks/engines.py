"""`dedup run --engine ray` against the local engine on the nine Flickr8k shards: the same manifest,
embeddings and output shards, and the time each took (Ray's start-up included).

    .venv/bin/python benchmarks/engines.py --workers 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FLICKR = ROOT.parent / "shared" / "data" / "flickr8k"


def main() -> None:
    from dedup.io.store import EmbeddingStore

    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--config", default=str(ROOT / "configs" / "offline.toml"))
    args = parser.parse_args()
    shards = sorted(FLICKR.glob("flickr8k-224-*.tar"))
    results, runs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in ("local", "ray"):
            run_dir = Path(tmp) / engine
            started = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "dedup.cli",
                    "--quiet",
                    "run",
                    *map(str, shards),
                    "--config",
                    args.config,
                    "--run-dir",
                    str(run_dir),
                    "--engine",
                    engine,
                    "--workers",
                    str(args.workers),
                ],
                check=True,
            )
            results[f"{engine} seconds"] = round(time.perf_counter() - started, 1)
            runs[engine] = run_dir
        columns = ["key", "shard", "status", "reason", "group_id"]
        manifests = {e: pq.read_table(d / "manifest.parquet").select(columns) for e, d in runs.items()}
        stores = {e: EmbeddingStore(d / "embeddings").load() for e, d in runs.items()}
        digests = {
            e: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((d / "shards").glob("*.tar"))}
            for e, d in runs.items()
        }
        summary = json.loads((runs["ray"] / "summary.json").read_text())
        results.update(
            {
                "samples": len(manifests["local"]),
                "kept": summary["kept"],
                "dropped": summary["dropped"],
                "unreadable": summary["unreadable"],
                "manifests_equal": manifests["local"].equals(manifests["ray"]),
                "embeddings_equal": bool(np.array_equal(stores["local"].embeddings, stores["ray"].embeddings)),
                "output_shards_identical": digests["local"] == digests["ray"],
            }
        )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
