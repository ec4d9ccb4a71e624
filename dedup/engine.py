"""Engines run independent units of work and collect their results. Stages never know which engine runs them.

A unit is a picklable function and its arguments. It returns a result value; an exception escaping a unit
becomes a failed result, the other units go on, and the stage decides what a failure means. Skipping
finished units is the stage's job (it knows its completion markers), so every engine resumes alike.
"""

from __future__ import annotations

import ast
import multiprocessing
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any


@dataclass
class Unit:
    name: str
    function: Callable[..., Any]
    kwargs: dict


@dataclass
class UnitResult:
    name: str
    value: Any = None
    error: str | None = None
    kind: str | None = None  # the exception class, so a stage can keep "bad input" apart from a bug

    @property
    def ok(self) -> bool:
        return self.error is None


def _call(unit: Unit) -> UnitResult:
    try:
        return UnitResult(unit.name, value=unit.function(**unit.kwargs))
    except Exception as error:  # noqa: BLE001 - failures come back as values
        from dedup.errors import DedupError

        if isinstance(error, DedupError):
            return UnitResult(unit.name, error=str(error), kind=type(error).__name__)
        return UnitResult(
            unit.name, error=f"{type(error).__name__}: {error}\n{traceback.format_exc()}", kind=type(error).__name__
        )


class LocalEngine:
    """Units in this process (workers=1), in a pool of spawned processes, or with `threads` in a pool of
    threads of this process: for units that wait on I/O outside the GIL, without a process's start-up."""

    name = "local"

    def __init__(self, workers: int = 1, threads: bool = False):
        self.workers = max(1, int(workers))
        self.threads = threads

    def map(self, units: Sequence[Unit], on_done: Callable[[UnitResult], None] | None = None) -> list[UnitResult]:
        results: list[UnitResult] = []
        if self.workers == 1 or len(units) <= 1:
            for unit in units:
                result = _call(unit)
                results.append(result)
                if on_done:
                    on_done(result)
            return results
        workers = min(self.workers, len(units))
        threads = self.threads or not processes_can_start(workers)
        pool = (
            ThreadPoolExecutor(workers)
            if threads
            else ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        )
        with pool:
            futures = [pool.submit(_call, unit) for unit in units]
            try:
                for future in as_completed(futures):
                    result = future.result()
                    results.append(result)
                    if on_done:
                        on_done(result)
            except BaseException:  # Ctrl-C: leaving `with` would wait for every queued unit; the running ones finish
                pool.shutdown(cancel_futures=True)
                raise
        order = {unit.name: i for i, unit in enumerate(units)}
        return sorted(results, key=lambda r: order[r.name])


UNGUARDED = (
    "dedup runs its {workers} workers as threads: worker processes re-run the main script ({script}), and "
    'this one calls dedup outside `if __name__ == "__main__":`. Put the call under that guard to get processes.'
)
UNREADABLE = (
    "dedup runs its {workers} workers as threads: worker processes re-run the main script, and code piped "
    'to `python -` cannot be read again. Save it as a file with the call under `if __name__ == "__main__":` '
    "to get processes."
)


def processes_can_start(workers: int = 2) -> bool:
    """Whether spawned worker processes can start from here. A spawned child runs the main script again before
    it takes work: fine for a script whose calls sit under `if __name__ == "__main__":` or for no script at all
    (python -c, a notebook, a prompt); not for code piped to `python -`, which the child cannot read again,
    nor for a script that calls dedup at its top level, which each child would run again. Warns when not."""
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    if main is None or script is None:
        return True
    readable = os.path.isfile(script)
    if readable and not _called_outside_main_guard(main, script):
        return True
    warnings.warn(
        (UNGUARDED if readable else UNREADABLE).format(workers=workers, script=script), RuntimeWarning, stacklevel=3
    )
    return False


def _called_outside_main_guard(main, script: str) -> bool:
    """Whether the main script's top level is, right now, at a line outside its `if __name__ == "__main__":`."""
    frame: FrameType | None = sys._getframe()
    while frame is not None and not (frame.f_globals is main.__dict__ and frame.f_code.co_name == "<module>"):
        frame = frame.f_back
    if frame is None:  # not called from the script's top level (a thread, a callback): nothing re-runs
        return False
    try:
        tree = ast.parse(Path(script).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return True
    return not any(
        node.lineno <= frame.f_lineno <= (node.end_lineno or node.lineno)
        for node in tree.body
        if isinstance(node, ast.If) and _tests_main_name(node.test)
    )


def _tests_main_name(test: ast.expr) -> bool:
    return (
        isinstance(test, ast.Compare)
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.Eq)
        and {ast.unparse(test.left), ast.unparse(test.comparators[0])} in ({"__name__", "'__main__'"},)
    )


def failed(results: Iterable[UnitResult]) -> list[UnitResult]:
    return [r for r in results if not r.ok]


def run_units(engine, units: Sequence[Unit], stage: str, total: int, what: str, reporter) -> list[UnitResult]:
    """Run a stage's pending units with progress; raise once, naming the failed units, if any failed.

    `total` counts every unit of the stage, finished ones included, so progress and messages tell the
    whole stage, not just this rerun's share.
    """
    from dedup.errors import DedupError, InputError

    done = total - len(units)
    if done:
        reporter.info(f"{stage}: {done} of {total} {what} already done, {len(units)} to go")
    with reporter.task(stage, total=total) as progress:
        progress.advance(done)
        results = engine.map(units, on_done=lambda r: progress.advance(1, samples=(r.value or {}).get("samples", 0)))
    problems = failed(results)
    if problems:
        listing = "; ".join(f"{r.name}: {(r.error or '').splitlines()[0]}" for r in problems[:5])
        error = InputError if any(r.kind == "InputError" for r in problems) else DedupError
        raise error(
            f"{stage}: {len(problems)} of {len(units)} {what} failed ({listing}); rerun the same command to retry them"
        )
    return results


class _UnitRunner:
    """A Ray Data actor: runs pickled units. Actors live for the whole stage, so a unit that caches a model
    per process (embed does) loads it once per actor: an actor pool of model replicas."""

    def __call__(self, batch: dict) -> dict:
        from ray import cloudpickle

        results = [cloudpickle.dumps(_call(cloudpickle.loads(blob))) for blob in batch["unit"]]
        return {"position": batch["position"], "result": results}


class RayEngine:
    """Units as rows of a Ray Data dataset, mapped by an actor pool (one GPU an actor when asked) on a
    local Ray started here or an existing cluster (`address`, e.g. "auto" or "ray://head:10001").

    A unit reads and writes the same files as under the local engine, so outputs are the same and a
    rerun under either engine resumes the other's work. On a cluster, every node needs `dedup` installed
    and the input and output paths reachable (a shared file system or fsspec URLs)."""

    name = "ray"

    def __init__(self, workers: int = 1, address: str | None = None, gpus_per_worker: float = 0.0):
        """`gpus_per_worker` -1: one GPU an actor if the cluster has GPUs, else none."""
        self.workers = max(1, int(workers))
        self.address = address or None
        self.gpus_per_worker = gpus_per_worker

    def _connect(self):
        import logging

        import ray

        for name in ("ray", "ray.data"):  # our reporter shows progress; Ray's own lines would drown it
            logging.getLogger(name).setLevel(logging.ERROR)
        if not ray.is_initialized():
            local: dict = {} if self.address else {"num_cpus": max(self.workers, 1)}
            ray.init(
                address=self.address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                ignore_reinit_error=True,
                **local,
            )
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        return ray

    def _pool_size(self, ray, units: int) -> int:
        """Actors for `units`: no more than the cluster has CPUs (an actor takes one), else the pool would wait
        for actors that never start (write asks for 4 workers; a local Ray has the CPUs embed asked for)."""
        cpus = int(ray.cluster_resources().get("CPU", 1))
        return max(1, min(self.workers, units, cpus))

    def map(self, units: Sequence[Unit], on_done: Callable[[UnitResult], None] | None = None) -> list[UnitResult]:
        if not units:
            return []
        from ray import cloudpickle

        ray = self._connect()
        gpus = self.gpus_per_worker
        if gpus < 0:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        dataset = ray.data.from_items(
            [{"position": i, "unit": cloudpickle.dumps(unit)} for i, unit in enumerate(units)],
            override_num_blocks=len(units),
        )
        mapped = dataset.map_batches(
            _UnitRunner,
            batch_size=1,
            num_cpus=1,
            num_gpus=gpus or None,
            compute=ray.data.ActorPoolStrategy(size=self._pool_size(ray, len(units))),
        )
        results: list[tuple[int, UnitResult]] = []
        for row in mapped.iter_rows():
            result = cloudpickle.loads(row["result"])
            results.append((int(row["position"]), result))
            if on_done:
                on_done(result)
        return [result for _, result in sorted(results, key=lambda item: item[0])]


def make_engine(
    kind: str, workers: int, address: str | None = None, gpus_per_worker: float = 0.0, threads: bool = False
):
    """The engine a stage runs its units on: "local" (processes on this machine, or with `threads` threads of
    this process) or "ray"."""
    from dedup.errors import SettingsError

    if kind == "local":
        return LocalEngine(workers, threads)
    if kind != "ray":
        raise SettingsError(f"unknown engine {kind!r}; use local or ray")
    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise SettingsError("engine ray needs Ray Data: pip install 'dedup[ray]' (ray[data])") from None
    return RayEngine(workers, address, gpus_per_worker)


def stage_engine(settings, stage: str):
    """The engine for one stage of a run (`settings`: RunSettings): embed's units may use a GPU; write's wait on
    I/O outside the GIL, so the local engine runs them on threads."""
    engine, workers = settings.engine, getattr(settings, stage).workers
    gpus = engine.gpus_per_worker if stage == "embed" else 0.0
    return make_engine(engine.kind, workers, engine.address, gpus, threads=stage == "write")
