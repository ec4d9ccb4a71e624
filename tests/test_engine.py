"""The local engine: units on threads or processes, failures as values, Ctrl-C stops what has not started."""

from __future__ import annotations

import threading
import time

import pytest

from dedup.engine import LocalEngine, Unit

STARTED: list[int] = []
LOCK = threading.Lock()


def record(number: int, fail: bool = False) -> dict:
    with LOCK:
        STARTED.append(number)
    time.sleep(0.05)
    if fail:
        raise ValueError(f"unit {number} failed")
    return {"number": number}


def units(count: int, failing: int = -1) -> list[Unit]:
    return [Unit(f"u{n}", record, {"number": n, "fail": n == failing}) for n in range(count)]


def test_threads_return_results_in_unit_order_and_failures_as_values():
    results = LocalEngine(4, threads=True).map(units(10, failing=3))
    assert [r.name for r in results] == [f"u{n}" for n in range(10)]
    assert [r.ok for r in results].count(False) == 1 and "unit 3 failed" in results[3].error
    assert [r.value["number"] for r in results if r.ok] == [n for n in range(10) if n != 3]


def test_interrupt_on_threads_stops_units_not_yet_started():
    STARTED.clear()

    def interrupt(result):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        LocalEngine(2, threads=True).map(units(40), on_done=interrupt)
    time.sleep(0.3)  # had the queue gone on, 40 units at 0.05 s on 2 threads would still be starting
    assert len(STARTED) <= 4, STARTED
