"""Errors that stop a run. Each carries a message a user can act on and the exit code the CLI returns."""

from __future__ import annotations


class DedupError(Exception):
    """A fault that stops the run: bad input, bad settings or a missing model. Never a per-sample fault."""

    exit_code = 1


class InputError(DedupError):
    """The input cannot be used (missing path, no readable shard, changed since embedding)."""

    exit_code = 2


class SettingsError(DedupError):
    """An option or config value is invalid; raised before any work starts."""

    exit_code = 3


class ModelUnavailableError(DedupError):
    """Model weights cannot be obtained (offline and not cached)."""

    exit_code = 4


def require_extra(module: str, extra: str, what: str) -> None:
    """Stop, with the line that installs it, when `what` needs an optional dependency that is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise SettingsError(f"{what} needs {module}, which is not installed: pip install 'dedup[{extra}]'")
