"""Progress for people (rich bars on stderr) and for pipelines (one JSON line per event), or silence."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from typing import IO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Reporter:
    def __init__(self, quiet: bool = False, log_json: IO[str] | None = None, console: Console | None = None):
        self.quiet = quiet
        self.log_json = log_json
        self.console = console or Console(stderr=True)

    def event(self, event: str, **fields) -> None:
        if self.log_json is not None:
            record = {"time": round(time.time(), 3), "event": event, **fields}
            self.log_json.write(json.dumps(record, default=str) + "\n")
            self.log_json.flush()

    def info(self, message: str, **fields) -> None:
        self.event("info", message=message, **fields)
        if not self.quiet:  # in a log (not a terminal) a line is never folded: a path in it stays whole
            self.console.print(message, soft_wrap=not self.console.is_terminal)

    def warn(self, message: str, **fields) -> None:
        self.event("warning", message=message, **fields)
        if not self.quiet:
            self.console.print(
                f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=not self.console.is_terminal
            )

    @contextlib.contextmanager
    def task(self, stage: str, total: int, unit: str = "shards") -> Iterator[TaskProgress]:
        self.event("stage_start", stage=stage, total=total, unit=unit)
        started = time.perf_counter()
        if self.quiet or not self.console.is_terminal and self.log_json is not None:
            handle = TaskProgress(self, stage, None, None)
            yield handle
        else:
            columns = (
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
            )
            with Progress(*columns, console=self.console, transient=False) as progress:
                task_id = progress.add_task(stage, total=total, rate="")
                handle = TaskProgress(self, stage, progress, task_id)
                yield handle
        self.event("stage_end", stage=stage, seconds=round(time.perf_counter() - started, 3), samples=handle.samples)


class TaskProgress:
    def __init__(self, reporter: Reporter, stage: str, progress: Progress | None, task_id):
        self.reporter, self.stage, self.progress, self.task_id = reporter, stage, progress, task_id
        self.samples = 0
        self.started = time.perf_counter()

    def advance(self, units: int = 1, samples: int = 0, **fields) -> None:
        self.samples += samples
        rate = self.samples / max(time.perf_counter() - self.started, 1e-9)
        if self.progress is not None:
            self.progress.update(self.task_id, advance=units, rate=f"{rate:,.0f} samples/s" if self.samples else "")
        self.reporter.event(
            "progress", stage=self.stage, units=units, samples=self.samples, samples_per_s=round(rate, 1), **fields
        )


SILENT = Reporter(quiet=True)


def default_reporter() -> Reporter:
    return Reporter(quiet=not sys.stderr.isatty())
