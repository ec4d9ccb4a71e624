"""What every settings dataclass is made of: fields that carry their help text, and range checks."""

from __future__ import annotations

import dataclasses
from typing import Any

from dedup.errors import SettingsError


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field whose help text the CLI shows: the one place an option is described."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"help": help})


def help_of(cls: type, name: str) -> str:
    return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)


def positive(**values: Any) -> None:
    for name, value in values.items():
        if value is None or value <= 0:
            raise SettingsError(f"{name} must be positive, got {value}")
