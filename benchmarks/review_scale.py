"""`dedup review` on a run of 1,000,000 samples: how long it takes to start, to serve the first page (the page,
its data and all 48 thumbnails, cold), to page anywhere (with and without filters), to record a label, and the
server's peak memory.

The run is synthetic but shaped like a real one: groups.parquet, pairs.parquet, manifest.parquet and find.json of
N samples, 30 % of them in duplicate groups with heavy-tailed sizes (2 to 200), pairs on a chain inside each group
plus extra edges, similarities 0.80-1.0 around the threshold 0.85, four signals; every sample points at a real
photo of the shared Flickr8k shards (8,091 photos, reused) so that thumbnails are read (by the byte ranges embed records), decoded and
resized as in a real run; an embeddings store of N x 512 float16 unit vectors (clip-retrieval layout) for the near-miss search.

The server runs as a user runs it (`dedup review RUN --port 0`, its own process); the client is this script over
HTTP with six connections in parallel for thumbnails, as a browser opens them. The page offsets are drawn from
`--seed` before anything is measured.

    .venv/bin/python benchmarks/review_scale.py --samples 1000000 --out /tmp/review-scale
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FLICKR = ROOT.parent / "shared" / "data" / "flickr8k"
SIGNALS = ["exact", "pdq", "embedding", "verified"]
PAGE = 24


def group_sizes(rng: np.random.Generator, rows_in_groups: int) -> list[int]:
    sizes, total = [], 0
    while total < rows_in_groups:
        size = int(min(200, 2 + rng.zipf(2.2) - 1))
        size = min(size, rows_in_groups - total) if rows_in_groups - total >= 2 else 2
        sizes.append(size)
        total += size
    return sizes


def make_run(folder: Path, samples: int, seed: int = 0) -> None:
    from dedup.io.tarspans import span_table

    rng = np.random.default_rng(seed)
    shards = sorted(str(p) for p in FLICKR.glob("flickr8k-224-*.tar"))
    tables = [span_table(s) for s in shards]
    counts = np.array([len(table.starts) for table in tables])
    shard_of = np.arange(samples) % len(shards)
    sample_index = (np.arange(samples) // len(shards)) % counts[shard_of]

    order = rng.permutation(samples)
    sizes = group_sizes(rng, int(samples * 0.3))
    group_id = np.arange(samples, dtype=np.int64)
    a_parts, b_parts = [], []
    start = 0
    for size in sizes:
        members = np.sort(order[start : start + size])
        start += size
        group_id[members] = members[0]
        a_parts.append(members[:-1])
        b_parts.append(members[1:])
        extra = min(size - 2, 3)
        if extra > 0:
            a_parts.append(rng.choice(members, extra))
            b_parts.append(rng.choice(members, extra))
    a, b = np.concatenate(a_parts), np.concatenate(b_parts)
    keep = a != b
    a, b = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    packed = np.unique(a * (1 << 32) + b)
    a, b = packed >> 32, packed & ((1 << 32) - 1)
    group_size = np.bincount(group_id, minlength=samples)[group_id]
    signals = rng.choice(len(SIGNALS), len(a), p=[0.2, 0.2, 0.5, 0.1])
    similarity = np.where(
        SIGNALS.index("verified") == signals, rng.uniform(0.77, 0.85, len(a)), rng.uniform(0.85, 1.0, len(a))
    )

    keys = pa.array([f"{i:09d}" for i in range(samples)])
    shard_column = pa.array(np.asarray(shards, dtype=object)[shard_of].tolist(), pa.string())
    captions = pa.array(
        [f"a photograph, number {i}, of people and dogs in a park near the water" for i in range(samples)]
    )
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "row": pa.array(np.arange(samples, dtype=np.int64)),
                "key": keys,
                "shard": shard_column,
                "shard_index": pa.array(shard_of.astype(np.int32)),
                "sample_index": pa.array(sample_index.astype(np.int32)),
                "group_id": pa.array(group_id),
                "group_size": pa.array(group_size.astype(np.int64)),
                "width": pa.array(np.full(samples, 224, np.int32)),
                "height": pa.array(np.full(samples, 224, np.int32)),
                "caption": captions,
            }
        ),
        folder / "groups.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "a": pa.array(a.astype(np.int64)),
                "b": pa.array(b.astype(np.int64)),
                "signal": pa.array(np.asarray(SIGNALS, dtype=object)[signals].tolist(), pa.string()),
                "similarity": pa.array(similarity.astype(np.float32)),
                "hamming": pa.array(rng.integers(0, 40, len(a)).astype(np.int32)),
                "inliers": pa.array(np.where(signals == SIGNALS.index("verified"), 60, -1).astype(np.int32)),
            }
        ),
        folder / "pairs.parquet",
    )
    first_of_group = group_id == np.arange(samples)
    pq.write_table(
        pa.table(
            {
                "shard": shard_column,
                "shard_index": pa.array(shard_of.astype(np.int32)),
                "sample_index": pa.array(sample_index.astype(np.int32)),
                "key": keys,
                "status": pa.array(np.where(first_of_group, "kept", "dropped").tolist(), pa.string()),
            }
        ),
        folder / "manifest.parquet",
    )
    (folder / "find.json").write_text(json.dumps({"settings": {"threshold": 0.85}, "samples": samples}))
    starts = np.concatenate([table.starts for table in tables])
    ends = np.concatenate([table.ends for table in tables])
    first_row = np.concatenate([[0], np.cumsum(counts)[:-1]])
    spans = np.stack(
        [sample_index, starts[first_row[shard_of] + sample_index], ends[first_row[shard_of] + sample_index]], 1
    )
    for name in ("img_emb", "metadata", "spans"):
        (folder / "embeddings" / name).mkdir(parents=True, exist_ok=True)
    part_rows = 100_000
    for part, begin in enumerate(range(0, samples, part_rows)):
        rows = min(part_rows, samples - begin)
        vectors = rng.standard_normal((rows, 512), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        # 2 % of rows lie just below the threshold from another row: the near misses review shows
        near, other = rng.choice(rows, (2, rows // 50), replace=False)
        cosine = rng.uniform(0.78, 0.849, len(near)).astype(np.float32)[:, None]
        vectors[near] = cosine * vectors[other] + np.sqrt(1 - cosine**2) * vectors[near]
        vectors[near] /= np.linalg.norm(vectors[near], axis=1, keepdims=True)
        np.save(folder / "embeddings" / "img_emb" / f"img_emb_{part}.npy", vectors.astype(np.float16))
        metadata = {
            "key": keys.slice(begin, rows),
            "sample_index": pa.array(sample_index[begin : begin + rows].astype(np.int32)),
        }
        pq.write_table(pa.table(metadata), folder / "embeddings" / "metadata" / f"metadata_{part}.parquet")
        payload = np.zeros((rows, 1), np.int64)  # (sample index, start, end, payload bytes), as embed records them
        np.save(
            folder / "embeddings" / "spans" / f"spans_{part}.npy", np.hstack([spans[begin : begin + rows], payload])
        )


class Client:
    def __init__(self, port: int, connections: int = 6):
        self.port = port
        self.pool = ThreadPoolExecutor(connections)
        self.local = __import__("threading").local()

    def _connection(self) -> http.client.HTTPConnection:
        if not hasattr(self.local, "connection"):
            self.local.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        return self.local.connection

    def get(self, path: str, body: bytes | None = None, headers: dict | None = None) -> bytes:
        try:
            response = self._send(path, body, headers)
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            del self.local.connection  # the server closed an idle keep-alive connection: open another
            response = self._send(path, body, headers)
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {data[:200]!r}")
        return data

    def _send(self, path: str, body: bytes | None, headers: dict | None) -> http.client.HTTPResponse:
        connection = self._connection()
        connection.request("POST" if body is not None else "GET", path, body=body, headers=headers or {})
        return connection.getresponse()

    def page(self, path: str) -> tuple[float, float]:
        """Seconds to the page's data, and to the data and all its thumbnails (six at a time)."""
        started = time.perf_counter()
        payload = json.loads(self.pool.submit(self.get, path).result())
        data_done = time.perf_counter() - started
        rows = [side["row"] for pair in payload.get("pairs", []) for side in (pair["a"], pair["b"])]
        rows += [member["row"] for group in payload.get("groups", []) for member in group["members"]]
        list(self.pool.map(lambda row: self.get(f"/thumb/{row}"), rows))
        return data_done, time.perf_counter() - started


def peak_memory_mb(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    field = lambda name: int(re.search(rf"{name}:\s+(\d+) kB", status).group(1)) / 1024
    return {"peak_rss_mb": round(field("VmHWM"), 1), "rss_mb": round(field("VmRSS"), 1)}


def summarise(times: list[float]) -> dict:
    ordered = sorted(times)
    return {
        "median_ms": round(1000 * statistics.median(ordered), 1),
        "p95_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
        "max_ms": round(1000 * ordered[-1], 1),
        "pages": len(ordered),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path("/tmp/review-scale"))
    parser.add_argument("--pages", type=int, default=40, help="Pages fetched at random offsets.")
    parser.add_argument("--seed", type=int, default=2026, help="Seed of the page offsets (chosen before measuring).")
    arguments = parser.parse_args()
    run_dir = arguments.out / f"run-{arguments.samples}"
    if not (run_dir / "find.json").exists():
        started = time.perf_counter()
        make_run(run_dir, arguments.samples)
        print(f"made the synthetic run in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    (run_dir / "labels.parquet").unlink(missing_ok=True)

    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "dedup.cli", "review", str(run_dir), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**__import__("os").environ, "PYTHONUNBUFFERED": "1"},
    )
    port = None
    while port is None:
        line = server.stdout.readline()
        if not line:
            raise SystemExit("dedup review ended before printing its address")
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        port = int(found.group(1)) if found else None
    startup = time.perf_counter() - started
    client = Client(port)
    try:
        first_started = time.perf_counter()
        page_html = client.get("/").decode()
        token = re.search(r'name="dedup-token" content="([^"]+)"', page_html).group(1)
        client.get("/static/review.js")
        client.get("/static/review.css")
        summary = json.loads(client.get("/api/summary"))
        _, first_page_total = client.page(f"/api/pairs?offset=0&limit={PAGE}")
        first_page = time.perf_counter() - first_started

        rng = np.random.default_rng(arguments.seed)
        total_pairs = summary["pairs"]
        plain, plain_data = [], []
        for offset in rng.integers(0, total_pairs - PAGE, arguments.pages):
            data, total = client.page(f"/api/pairs?offset={int(offset)}&limit={PAGE}")
            plain_data.append(data)
            plain.append(total)
        filtered, filtered_data = [], []
        filters = [
            "signal=pdq",
            "low=0.85&high=0.86",
            "unlabelled=1",
            "signal=near+miss",
            "signal=verified&low=0.83&high=0.85",
        ]
        totals = {f: json.loads(client.get(f"/api/pairs?limit=1&{f}"))["total"] for f in filters}
        for number, fraction in enumerate(rng.random(arguments.pages)):
            chosen = filters[number % len(filters)]
            offset = int(fraction * max(0, totals[chosen] - PAGE))
            data, total = client.page(f"/api/pairs?offset={offset}&limit={PAGE}&{chosen}")
            filtered_data.append(data)
            filtered.append(total)
        groups, groups_data = [], []
        for offset in rng.integers(0, summary["groups"] - 10, arguments.pages // 2):
            data, total = client.page(f"/api/groups?offset={int(offset)}&limit=10")
            groups_data.append(data)
            groups.append(total)
        labelling = []
        headers = {"Content-Type": "application/json", "X-Dedup-Token": token}
        for pair in rng.integers(0, total_pairs, 20):
            began = time.perf_counter()
            client.get("/api/label", json.dumps({"pair": int(pair), "label": "distinct"}).encode(), headers)
            labelling.append(time.perf_counter() - began)
        memory = peak_memory_mb(server.pid)
    finally:
        server.kill()
        server.wait()
    result = {
        "samples": arguments.samples,
        "pairs_in_queue": total_pairs,
        "found_pairs": summary["found_pairs"],
        "near_misses": summary["near_misses"],
        "groups": summary["groups"],
        "startup_s": round(startup, 2),
        "first_page_s": round(first_page, 3),
        "first_page_pairs_and_thumbnails_s": round(first_page_total, 3),
        "pairs_page_data": summarise(plain_data),
        "pairs_page_with_thumbnails": summarise(plain),
        "filtered_page_data": summarise(filtered_data),
        "filtered_page_with_thumbnails": summarise(filtered),
        "groups_page_data": summarise(groups_data),
        "groups_page_with_thumbnails": summarise(groups),
        "label_post": summarise(labelling),
        **memory,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
