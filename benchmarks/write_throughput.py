"""MB/s of `dedup write` against a plain copy of the same shards (`cp`, and `tar` unpack + repack).

The run keeps every sample (policy none), so write copies as many bytes as cp does. `--repeats` rounds each
run every command once, in turn; the output gives each command's best time and every round's, and each
ratio of the best times and as the median of the rounds' ratios.
`--copies K` lays the shards out K times (real copies, new file names), so the command's fixed costs (Python
start, reading the manifest) weigh as they do on a corpus rather than on 148 MB. At 60 copies (8.9 GB) the
copies outgrow the kernel's dirty-page budget (20 % of memory here) and every command, cp included, waits on
the disk's write-back. The page cache is warmed with the inputs first; `--cold` drops it before each command
instead (root only), so that every command reads from disk, as on a corpus larger than memory.

The run folder write reads is made once by `dedup embed`, `find` (exact copies only: policy none keeps every
sample anyway) and `select`; `--workdir` keeps the copies and that run folder for the next invocation.

    .venv/bin/python benchmarks/write_throughput.py --shards 9
    .venv/bin/python benchmarks/write_throughput.py --shards 9 --copies 10 --workdir /tmp/write-bench
    .venv/bin/python benchmarks/write_throughput.py --shards 9 --copies 60 --workdir /tmp/write-bench
    .venv/bin/python benchmarks/write_throughput.py --shards 9 --copies 60 --workdir /tmp/write-bench --cold
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLICKR = ROOT.parent / "shared" / "data" / "flickr8k"
DEDUP = [sys.executable, "-m", "dedup.cli", "--quiet"]


def seconds_of(command: list[str] | str, shell: bool = False) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, shell=shell, capture_output=True)
    return time.perf_counter() - started


def rounds_of(commands: dict, repeats: int, clear, cold: bool) -> dict[str, list[float]]:
    """Each round runs every command once, in turn, each on an empty output folder after a `sync` and a
    pause: this disk's speed drifts between runs, and a command run right after another's writes pays for
    their writeback. `cold`: the page cache is dropped too, so every command reads its inputs (and Python
    its modules) from disk."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, (command, shell) in commands.items():
            clear()
            subprocess.run(["sync"], check=True)
            if cold:
                Path("/proc/sys/vm/drop_caches").write_text("3\n")
            time.sleep(2)
            times[name].append(seconds_of(command, shell))
    return times


def ratios(times: dict[str, list[float]], baseline: str, candidate: str) -> dict[str, float]:
    """baseline time / candidate time: of the best of each, and the median over rounds (each round's two
    commands ran minutes apart at most, so a slow spell of the disk weighs on both)."""
    per_round = sorted(b / c for b, c in zip(times[baseline], times[candidate]))
    return {
        "of_best": round(min(times[baseline]) / min(times[candidate]), 3),
        "median_of_rounds": round(per_round[len(per_round) // 2], 3),
    }


def copies_of(shards: list[Path], copies: int, folder: Path) -> list[Path]:
    """The shards laid out `copies` times; copies already there (from an earlier run in `--workdir`) are kept."""
    folder.mkdir(exist_ok=True)
    laid_out = []
    for copy in range(copies):
        for shard in shards:
            target = folder / f"{shard.stem}-copy{copy:03d}.tar"
            if not target.exists() or target.stat().st_size != shard.stat().st_size:
                shutil.copyfile(shard, target)
            laid_out.append(target)
    return laid_out


def prepare_run(shards: list[Path], run: Path) -> None:
    """The run folder write reads: every sample embedded (pixels), grouped by content hash, every sample kept."""
    if (run / "manifest.parquet").exists():
        return
    config = ["--config", str(ROOT / "configs" / "offline.toml")]
    subprocess.run([*DEDUP, "embed", *map(str, shards), *config, "--run-dir", str(run)], check=True)
    subprocess.run(
        [
            *DEDUP,
            "find",
            *config,
            "--run-dir",
            str(run),
            "--set",
            "find.phash_radius=off",
            "--set",
            "find.threshold=off",
            "--set",
            "find.corroborate_threshold=off",
        ],
        check=True,
    )
    subprocess.run([*DEDUP, "select", *config, "--run-dir", str(run), "--policy", "none"], check=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--copies", type=int, default=1, help="lay the shards out this many times")
    parser.add_argument("--tmp", default=None, help="folder for the run (default: the system's temporary folder)")
    parser.add_argument(
        "--workdir", default=None, help="keep the copies and the run folder here for the next invocation"
    )
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each command (root only)")
    args = parser.parse_args()
    originals = [FLICKR / f"flickr8k-224-{i:05d}.tar" for i in range(args.shards)]
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        work = Path(args.workdir) if args.workdir else tmp
        work.mkdir(parents=True, exist_ok=True)
        shards = originals if args.copies == 1 else copies_of(originals, args.copies, work / "inputs")
        total_mb = sum(p.stat().st_size for p in shards) / 1e6
        run = work / f"run-{args.shards}x{args.copies}"
        prepare_run(shards, run)
        if not args.cold:
            for shard in shards:
                shard.read_bytes()  # warm the page cache for every command alike
        out = tmp / "out"

        def clear() -> None:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()

        write = [*DEDUP, "write", "--run-dir", str(run), "--out", str(out), "--set", "write.samples_per_shard=1000"]
        inputs = " ".join(map(str, shards))
        commands = {
            "dedup write": (write, False),  # the defaults: 4 threads, each shard fsynced before its rename
            "dedup write, 1 thread": (write + ["--workers", "1"], False),
            # the same durability for cp:
            "cp + sync": (f"cp {inputs} {out} && sync {out}/*", True),
            "dedup write, sync none": (write + ["--set", "write.sync=none"], False),
            "cp": (f"cp {inputs} {out}", True),
        }
        if args.copies == 1:  # a file per member on disk: minutes at corpus size, and no closer to write
            repack = " && ".join(
                f"mkdir -p {out}/x{i} && tar -xf {s} -C {out}/x{i} && tar -cf {out}/{s.name} -C {out}/x{i} ."
                for i, s in enumerate(shards)
            )
            commands["tar unpack + repack"] = (repack, True)
        times = rounds_of(commands, args.repeats, clear, args.cold)
    print(
        json.dumps(
            {
                "input_mb": round(total_mb, 1),
                "input_shards": len(shards),
                "cache": "cold" if args.cold else "warm",
                **{
                    name: {
                        "seconds": round(min(values), 3),
                        "mb_per_s": round(total_mb / min(values), 1),
                        "rounds": [round(v, 2) for v in values],
                    }
                    for name, values in times.items()
                },
                "durable_write_vs_cp_sync": ratios(times, "cp + sync", "dedup write"),
                "durable_write_1_thread_vs_cp_sync": ratios(times, "cp + sync", "dedup write, 1 thread"),
                "write_sync_none_vs_cp": ratios(times, "cp", "dedup write, sync none"),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
