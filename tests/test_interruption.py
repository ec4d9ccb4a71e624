"""SIGKILL at random points in every stage, then rerun: the outputs equal those of an uninterrupted run,
and no partial file is ever visible under its final name.

DEDUP_KILLS sets how many kills (default 6), DEDUP_KILL_SEED the seed; the seed is printed so a failure
reproduces: DEDUP_KILL_SEED=<seed> pytest tests/test_interruption.py
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import DEDUP, FLICKR, run_cli

from dedup.tools.planting import plant

KILLS = int(os.environ.get("DEDUP_KILLS", "6"))
SEED = int(os.environ.get("DEDUP_KILL_SEED", str(random.SystemRandom().randrange(1_000_000))))
RUN_ARGS = ["--config", "offline", "--set", "write.samples_per_shard=40", "--set", "embed.batch_size=16"]


def check_complete(path: Path) -> None:
    """Every file under its final name must be whole."""
    if path.name.startswith(".tmp-"):
        return
    if path.suffix == ".npy":
        np.load(path)
    elif path.suffix == ".parquet":
        pq.read_table(path)
    elif path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".tar":
        with tarfile.open(path) as archive:
            for member in archive:
                archive.extractfile(member).read()


STAGES = ("embed", "find", "select", "write", "done")


def stage_reached(run_dir: Path, shards: int) -> str:
    """The stage a run is in, read from the files it has finished."""
    if (run_dir / "summary.json").exists():
        return "done"
    if (run_dir / "manifest.parquet").exists():
        return "write"
    if (run_dir / "groups.parquet").exists():
        return "select"
    if len(list((run_dir / "embeddings" / "stats").glob("*.json"))) == shards:
        return "find"
    return "embed"


def add_stage_reached(run_dir: Path, shards: int) -> str:
    """The stage a `dedup add` is in, read from the files it has finished (`shards`: all, the added included)."""
    log = run_dir / "increments.json"
    if not log.exists():
        return "embed"
    increments = json.loads(log.read_text())["increments"]
    if len(increments) > 1 and increments[-1]["done"]:
        return "done"
    if len(list((run_dir / "embeddings" / "stats").glob("*.json"))) < shards:
        return "embed"
    stored = sum(pq.read_metadata(p).num_rows for p in (run_dir / "embeddings" / "metadata").glob("*.parquet"))
    if pq.read_metadata(run_dir / "groups.parquet").num_rows < stored:
        return "find"
    if "decided_in" not in pq.read_schema(run_dir / "manifest.parquet").names:
        return "select"
    return "write"


def kill_targets(killed_in: dict[str, int]):
    """The stage each kill aims at: in turn, KILLS times, then on until each stage has had one (a kill aimed at a
    short stage can land after it), at most 16 more. `killed_in` is filled by the caller as kills land."""
    attempt = 0
    while attempt < KILLS or (set(STAGES[:4]) - set(killed_in) and attempt < KILLS + 16):
        missing = [stage for stage in STAGES[:4] if stage not in killed_in]
        yield STAGES[attempt % 4] if attempt < KILLS or not missing else missing[0]
        attempt += 1


RUN_WINDOWS = {"embed": 0.6, "find": 0.25, "select": 0.03, "write": 0.5}  # seconds a kill may wait inside a stage
ADD_WINDOWS = {"embed": 0.6, "find": 0.1, "select": 0.03, "write": 0.03}  # an add's later stages are shorter


def kill_inside(
    process: subprocess.Popen,
    run_dir: Path,
    shards: int,
    target: str,
    rng: random.Random,
    reached=stage_reached,
    windows: dict = RUN_WINDOWS,
) -> str:
    """Wait until the run reaches `target` (or passes it), then kill it at a random moment inside it."""
    while process.poll() is None and STAGES.index(reached(run_dir, shards)) < STAGES.index(target):
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, windows[target]))
    stage = reached(run_dir, shards)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return stage


def digest_outputs(run_dir: Path) -> dict:
    """The run's tables (NaN read as None, so that an unmeasured evidence compares equal) and output shards."""
    digests = {
        name: [
            {key: None if isinstance(value, float) and value != value else value for key, value in row.items()}
            for row in pq.read_table(run_dir / name).to_pylist()
        ]
        for name in ("manifest.parquet", "groups.parquet", "pairs.parquet")
    }
    digests["shards"] = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((run_dir / "shards").glob("*.tar"))
    }
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.pop("output_dir")
    digests["summary"] = summary
    digests["embeddings"] = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((run_dir / "embeddings" / "img_emb").glob("*.npy"))
    }
    return digests


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    plant(
        [str(FLICKR / "flickr8k-224-00004.tar")],
        root / "in",
        sources=40,
        copies=(1, 3),
        seed=11,
        limit=600,
        shard_size=100,
    )
    reference = root / "reference"
    started = time.perf_counter()
    run_cli("run", root / "in", "--run-dir", reference, *RUN_ARGS)
    return root, reference, time.perf_counter() - started


@pytest.mark.slow
def test_sigkill_anywhere_then_rerun_equals_uninterrupted(small_set, tmp_path):
    root, reference, duration = small_set
    rng = random.Random(SEED)
    print(f"DEDUP_KILL_SEED={SEED} kills={KILLS} reference run {duration:.1f}s")
    victim = tmp_path / "victim"
    shards = len(list((root / "in").glob("*.tar")))
    killed_in: dict[str, int] = {}
    windows = dict(RUN_WINDOWS)
    for target in kill_targets(killed_in):
        if victim.exists() and STAGES.index(stage_reached(victim, shards)) > STAGES.index(target):
            shutil.rmtree(victim)  # start over, so this kill lands inside its target stage
        process = subprocess.Popen(
            [*DEDUP, "--quiet", "run", str(root / "in"), "--run-dir", str(victim), *RUN_ARGS],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=tmp_path,
        )
        stage = kill_inside(process, victim, shards, target, rng, windows=windows)
        killed_in[stage] = killed_in.get(stage, 0) + 1
        if STAGES.index(stage) > STAGES.index(target):
            windows[target] /= 2  # the stage was over before the kill: aim earlier inside it next time
        for path in victim.rglob("*"):
            if path.is_file():
                check_complete(path)
    assert set(STAGES[:4]) <= set(killed_in), f"not every stage was hit: {killed_in}; replay: DEDUP_KILL_SEED={SEED}"
    print(f"killed in: {killed_in}")
    run_cli("run", root / "in", "--run-dir", victim, *RUN_ARGS)
    assert not list(victim.rglob(".tmp-*")), "a rerun must clear temporaries"
    assert digest_outputs(victim) == digest_outputs(reference), f"replay: DEDUP_KILL_SEED={SEED}"
    record = os.environ.get("DEDUP_KILL_RECORD")
    if record:
        Path(record).write_text(json.dumps({"seed": SEED, "kills": KILLS, "killed_in": killed_in}))


@pytest.mark.slow
def test_sigkill_during_add_then_rerun_equals_uninterrupted(small_set, tmp_path):
    """`dedup add` of three shards to a run of three, killed inside each of its stages, then run again: the same
    outputs as an add that was never interrupted."""
    root, _, _ = small_set
    rng = random.Random(SEED + 1)
    print(f"DEDUP_KILL_SEED={SEED} kills={KILLS} (add)")
    shards = sorted(str(p) for p in (root / "in").glob("*.tar"))
    first, added = shards[:3], shards[3:]
    base = tmp_path / "base"
    run_cli("run", *first, "--run-dir", base, *RUN_ARGS)
    reference = tmp_path / "reference"
    shutil.copytree(base, reference)
    run_cli("add", *added, "--run-dir", reference, "--out", reference / "shards", *RUN_ARGS)

    victim = tmp_path / "victim"
    killed_in: dict[str, int] = {}
    windows = dict(ADD_WINDOWS)
    for target in kill_targets(killed_in):
        if not victim.exists() or STAGES.index(add_stage_reached(victim, len(shards))) > STAGES.index(target):
            shutil.rmtree(victim, ignore_errors=True)
            shutil.copytree(base, victim)
        process = subprocess.Popen(
            [*DEDUP, "--quiet", "add", *added, "--run-dir", str(victim), "--out", str(victim / "shards"), *RUN_ARGS],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=tmp_path,
        )
        stage = kill_inside(process, victim, len(shards), target, rng, add_stage_reached, windows)
        killed_in[stage] = killed_in.get(stage, 0) + 1
        if STAGES.index(stage) > STAGES.index(target):
            windows[target] /= 2
        for path in victim.rglob("*"):
            if path.is_file():
                check_complete(path)
    print(f"killed in: {killed_in}")
    assert set(STAGES[:4]) <= set(killed_in), f"not every stage was hit: {killed_in}; replay: DEDUP_KILL_SEED={SEED}"
    run_cli("add", *added, "--run-dir", victim, "--out", victim / "shards", *RUN_ARGS)
    assert not list(victim.rglob(".tmp-*")), "a rerun must clear temporaries"
    assert digest_outputs(victim) == digest_outputs(reference), f"replay: DEDUP_KILL_SEED={SEED}"
