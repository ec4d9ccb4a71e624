"""Every option of every command, in one place: dataclasses whose fields carry their defaults and help,
one loader that converts config and command-line values by the fields' annotations, and the presets.

The CLI and the Python API build the same objects, so both accept the same options. A config key that does
not exist, or a value out of range, is refused before any work starts.
"""

from dedup.settings.attack import AttackSettings, ExtractSettings, ModelSettings, VerifySettings
from dedup.settings.download import DownloadSettings
from dedup.settings.loading import (
    apply,
    build,
    fill,
    load_settings,
    load_tool_settings,
    parse_override,
    preset_path,
    read_toml,
)
from dedup.settings.run import (
    EmbedSettings,
    EngineSettings,
    FindSettings,
    RunSettings,
    SelectSettings,
    WriteSettings,
    parse_policy,
)
from dedup.settings.tools import CalibrateSettings, ReportSettings

__all__ = [
    "AttackSettings",
    "CalibrateSettings",
    "ReportSettings",
    "DownloadSettings",
    "EmbedSettings",
    "EngineSettings",
    "ExtractSettings",
    "FindSettings",
    "ModelSettings",
    "RunSettings",
    "SelectSettings",
    "VerifySettings",
    "WriteSettings",
    "apply",
    "build",
    "fill",
    "load_settings",
    "load_tool_settings",
    "parse_override",
    "parse_policy",
    "preset_path",
    "read_toml",
]
