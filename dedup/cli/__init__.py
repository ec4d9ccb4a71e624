"""The `dedup` command: it parses options, loads settings and calls the Python API.

Exit codes: 0 success; 1 a stage failed (rerun resumes); 2 unusable input; 3 invalid settings;
4 model weights unavailable; 130 interrupted.
"""

from __future__ import annotations

from pathlib import Path

import typer

from dedup.cli.options import STATE, open_log
from dedup.progress import Reporter

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Find and remove near-duplicate images in WebDataset shards before training image generators.",
)


@app.callback()
def main(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or messages; errors still go to stderr."),
    log_json: Path | None = typer.Option(
        None, "--log-json", help="Append one JSON line per event to this file ('-' for stdout)."
    ),
) -> None:
    STATE["reporter"] = Reporter(quiet=quiet, log_json=open_log(log_json))


from dedup.cli import stages, tools  # noqa: E402  (the commands register themselves on `app`)

stages.register(app)
tools.register(app)
