"""dedup: find and remove near-duplicate images in WebDataset shards before training image generators.

The Python API mirrors the CLI: every stage takes the same settings objects.

    from dedup import embed, find, select, write, run, RunSettings
"""
from dedup.errors import DedupError, InputError, ModelUnavailableError, SettingsError
from dedup.pipeline import run
from dedup.settings import EmbedSettings, FindSettings, RunSettings, SelectSettings, WriteSettings, load_settings
from dedup.stages.embed import embed
from dedup.stages.find import find
from dedup.stages.select import select
from dedup.stages.write import write

__version__ = "0.1.0"
__all__ = [
    "DedupError", "InputError", "ModelUnavailableError", "SettingsError",
    "EmbedSettings", "FindSettings", "RunSettings", "SelectSettings", "WriteSettings", "load_settings",
    "embed", "find", "select", "write", "run",
]
