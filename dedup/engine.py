"""Engines run independent units of work and collect their results. Stages never know which engine runs them.

A unit is a picklable function and its arguments. It returns a result value; an exception escaping a unit
becomes a failed result, the other units go on, and the stage decides what a failure means. Skipping
finished units is the stage's job (it knows its completion markers), so every engine resumes alike.
"""
from __future__ import annotations

import multiprocessing
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence



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
        return UnitResult(unit.name, error=f"{type(error).__name__}: {error}\n{traceback.format_exc()}", kind=type(error).__name__)


class LocalEngine:
    """Units in this process (workers=1) or in a pool of spawned processes."""

    name = "local"

    def __init__(self, workers: int = 1):
        self.workers = max(1, int(workers))

    def map(self, units: Sequence[Unit], on_done: Callable[[UnitResult], None] | None = None) -> list[UnitResult]:
        results: list[UnitResult] = []
        if self.workers == 1 or len(units) <= 1:
            for unit in units:
                result = _call(unit)
                results.append(result)
                if on_done:
                    on_done(result)
            return results
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(self.workers, len(units)), mp_context=context) as pool:
            futures = [pool.submit(_call, unit) for unit in units]
            for future in as_completed(futures):
                result = future.result()
                results.append(result)
                if on_done:
                    on_done(result)
        order = {unit.name: i for i, unit in enumerate(units)}
        return sorted(results, key=lambda r: order[r.name])


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
        listing = "; ".join(f"{r.name}: {r.error.splitlines()[0]}" for r in problems[:5])
        error = InputError if any(r.kind == "InputError" for r in problems) else DedupError
        raise error(f"{stage}: {len(problems)} of {len(units)} {what} failed ({listing}); rerun the same command to retry them")
    return results
