"""What the commands share: error handling and exit codes, the common options, and options built from the
settings dataclasses (their help, type and default come from the field, so the CLI holds no second copy)."""

from __future__ import annotations

import functools
import inspect
import json
import sys
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from dedup.errors import DedupError
from dedup.io.runfolder import RunFolder
from dedup.progress import Reporter
from dedup.settings import (
    CalibrateSettings,
    DownloadSettings,
    EmbedSettings,
    EngineSettings,
    ExtractSettings,
    FindSettings,
    ReportSettings,
    RunSettings,
    SelectSettings,
    WriteSettings,
    apply,
    load_settings,
)
from dedup.settings.base import help_of
from dedup.settings.loading import unwrap_optional

STATE: dict = {"reporter": Reporter()}
SECTIONS: dict[str, type] = {
    "embed": EmbedSettings,
    "find": FindSettings,
    "select": SelectSettings,
    "write": WriteSettings,
    "engine": EngineSettings,
    "extract": ExtractSettings,
    "download": DownloadSettings,
    "report": ReportSettings,
    "calibrate": CalibrateSettings,
}

CONFIG = typer.Option(None, "--config", "-c", help="A TOML config file, or the name of a preset (configs/NAME.toml).")
SET = typer.Option(None, "--set", help="Override a config value: section.key=value (repeatable).")
RUN_DIR = typer.Option(None, "--run-dir", "-r", help="The run folder (default: from the config, else dedup-run).")
EMBEDDINGS = typer.Option(
    None, "--embeddings", help="Embeddings folder (default RUN_DIR/embeddings); a clip-retrieval output works too."
)
OUT = typer.Option(None, "--out", "-o", help="Output shard folder (default RUN_DIR/shards).")
ENGINE = ("engine.kind:--engine", "engine.address:--ray-address")


def reporter() -> Reporter:
    return STATE["reporter"]


@contextmanager
def handled() -> Iterator[Reporter]:
    """Runs a command: a DedupError exits with its code and one line on stderr, Ctrl-C with 130."""
    current = reporter()
    try:
        yield current
    except DedupError as error:
        current.event("error", kind=type(error).__name__, message=str(error), exit_code=error.exit_code)
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(error.exit_code) from None
    except MemoryError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("interrupted; rerun the same command to resume", err=True)
        raise typer.Exit(130) from None


def settings_from(config: str | None, overrides: list[str] | None, options: dict) -> RunSettings:
    """Defaults, then the config, then --set, then the command's own options."""
    return apply(
        load_settings(config, overrides),
        {k: v for k, v in options.items() if k in RunSettings.__annotations__},
        "command line",
    )


def store_embedder(store: Path) -> str | None:
    """The embedder a store of ours was made with; None for one made elsewhere (clip-retrieval, LAION)."""
    from dedup.io.store import EmbeddingStore

    try:
        spec = EmbeddingStore(store).read_spec() or {}
    except (OSError, ValueError):  # unreadable: `find` itself says so
        return None
    made_by = spec.get("embedder")
    return made_by.get("embedder") if isinstance(made_by, dict) else None


def place(settings: RunSettings, shards: list[str] | None, run_dir: Path | None, out: Path | None) -> None:
    """Command-line inputs and folders win over the config's."""
    if shards:
        settings.shards = list(shards)
    if run_dir:
        settings.run_dir = str(run_dir)
    if out:
        settings.output = str(out)


def run_folder(settings: RunSettings, run_dir: Path | None) -> RunFolder:
    """--run-dir, else the config's."""
    return RunFolder(run_dir or settings.run_dir)


def print_json(summary: dict) -> None:
    if not reporter().quiet:
        typer.echo(json.dumps(summary, indent=2, default=str))


def _option(spec: str) -> tuple[str, inspect.Parameter, list[tuple[str, str]]]:
    """An option for "section.field[+section.field...][:--flag]": type, help and default from the first field."""
    fields, _, flag = spec.partition(":")
    targets = [tuple(target.split(".", 1)) for target in fields.split("+")]
    section, name = targets[0]
    cls = SECTIONS[section]
    hint, optional = unwrap_optional(typing.get_type_hints(cls)[name])
    flag = flag or "--" + name.replace("_", "-")
    text = "; ".join(
        f"{section}: " * (len(targets) > 1) + _described(SECTIONS[section], name) for section, name in targets
    )
    if hint is bool:
        declared: Any = bool | None
        option = typer.Option(None, f"{flag}/--no-{flag[2:]}", help=text, show_default=False)
    else:
        declared = str | None if optional and hint is not str else hint | None  # 'off' for optional numbers
        option = typer.Option(None, flag, help=text, show_default=False)
    parameter_name = "__".join(targets[0])
    return (
        parameter_name,
        inspect.Parameter(parameter_name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=declared),
        targets,
    )  # type: ignore[return-value]


def _described(cls: type, name: str) -> str:
    default = getattr(cls(), name)
    return help_of(cls, name) + ("" if default in (None, "") else f" (default: {default})")


def with_settings(*specs: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give the command one option per settings field named ("embed.model", "engine.kind:--engine",
    "embed.workers+write.workers:--workers"); it receives the ones given as `options={section: {field: value}}`."""
    built = [_option(spec) for spec in specs]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command)
        kept = [p for p in signature.parameters.values() if p.name != "options"]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            options: dict[str, dict[str, Any]] = {}
            for parameter_name, _, targets in built:
                value = kwargs.pop(parameter_name, None)
                if value is not None:
                    for section, name in targets:
                        options.setdefault(section, {})[name] = value
            return command(*args, options=options, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=kept + [p for _, p, _ in built])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {k: v for k, v in command.__annotations__.items() if k != "options"}
        return wrapper

    return decorate


def open_log(log_json: Path | None):
    if log_json is None:
        return None
    return sys.stdout if str(log_json) == "-" else open(log_json, "a")
