"""dedup: find and remove near-duplicate images in WebDataset shards before training image generators.

The Python API mirrors the CLI: every stage takes the same settings objects.

    from dedup import embed, find, select, write, run, add, RunSettings
"""

from __future__ import annotations

import importlib
from typing import Any

from dedup.errors import DedupError, InputError, ModelUnavailableError, SettingsError
from dedup.settings import EmbedSettings, FindSettings, RunSettings, SelectSettings, WriteSettings, load_settings

__version__ = "0.1.0"

# the stages are imported when first used: `dedup write` should not pay for faiss, or `import dedup` for all
_STAGES = {
    "embed": "dedup.stages.embed",
    "find": "dedup.stages.find",
    "select": "dedup.stages.select",
    "write": "dedup.stages.write",
    "run": "dedup.runner",
    "add": "dedup.runner",
}

__all__ = [
    "DedupError",
    "InputError",
    "ModelUnavailableError",
    "SettingsError",
    "EmbedSettings",
    "FindSettings",
    "RunSettings",
    "SelectSettings",
    "WriteSettings",
    "load_settings",
    *_STAGES,
]


def __getattr__(name: str) -> Any:
    if name not in _STAGES:
        raise AttributeError(f"module 'dedup' has no attribute {name!r}")
    return getattr(importlib.import_module(_STAGES[name]), name)
