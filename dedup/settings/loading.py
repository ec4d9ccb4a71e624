"""One loader for every settings dataclass: defaults, then a TOML config (a file or a shipped preset), then
`section.key=value` overrides, each value converted to the type its field is annotated with."""

from __future__ import annotations

import dataclasses
import importlib.resources
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from dedup.errors import SettingsError
from dedup.settings.attack import ExtractSettings
from dedup.settings.download import DownloadSettings
from dedup.settings.run import RunSettings
from dedup.settings.tools import CalibrateSettings, ReportSettings

OFF_VALUES = ("off", "none", "false")
PRESET_FOLDER = "configs"  # ./configs/NAME.toml is looked at before the presets shipped in the package
T = TypeVar("T")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """(T, True) for `T | None`, else (hint, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        return (rest[0] if len(rest) == 1 else hint), True
    return hint, False


def convert(hint: Any, value: Any, key: str, origin: str) -> Any:
    """`value` as the annotated type `hint`; 'off', 'none' or 'false' turn an optional setting off."""
    hint, optional = unwrap_optional(hint)
    if optional and (value is None or (isinstance(value, str) and value.lower() in OFF_VALUES)):
        return None
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise SettingsError(f"{origin}: [{key}] must be a table of options")
        return fill(hint(), value, f"{origin} [{key}]")  # type: ignore[operator]
    container = typing.get_origin(hint)
    try:
        if container in (list, tuple):
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)):
                raise TypeError(value)
            (item_hint, *_rest) = typing.get_args(hint) or (Any,)
            converted = [item if item_hint is Any else convert(item_hint, item, key, origin) for item in items]
            return tuple(converted) if container is tuple else converted
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if hint is int and not isinstance(value, bool):
            return int(value)
        if hint is float and not isinstance(value, bool):
            return float(value)
        if hint is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        if hint is Any:
            return value
    name = getattr(hint, "__name__", str(hint))
    raise SettingsError(f"{origin}: {key} = {value!r} is not a valid {name}")


def fill(target: T, values: dict[str, Any], origin: str) -> T:
    """Set `values` ({"threshold": 0.9} or nested {"find": {...}}) on the dataclass `target`, each converted
    to its field's type; an unknown key is refused, naming the keys that exist."""
    hints = _hints(type(target))
    for key, value in values.items():
        if key not in hints:
            raise SettingsError(f"{origin}: unknown key {key!r}; known keys: {', '.join(sorted(hints))}")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            fill(current, value, f"{origin} [{key}]")
        else:
            setattr(target, key, convert(hints[key], value, key, origin))
    return target


def build(cls: type[T], values: dict[str, Any], origin: str) -> T:
    """A `cls` with its defaults, then `values`."""
    return fill(cls(), values, origin)


def preset_path(name: str, prefix: str = "") -> Path:
    """A config file, or a preset by name: ./configs/PREFIX+NAME.toml, then the presets shipped with dedup."""
    path = Path(name)
    if path.is_file():
        return path
    file_name = f"{prefix}{name}.toml"
    for folder in (Path(PRESET_FOLDER), shipped_presets()):
        if (folder / file_name).is_file():
            return folder / file_name
    known = sorted(p.stem[len(prefix) :] for p in shipped_presets().glob(f"{prefix}*.toml"))
    raise SettingsError(f"config {name!r} not found: neither a file nor a preset (known presets: {', '.join(known)})")


def shipped_presets() -> Path:
    """The presets installed with the package (configs/ of the source tree, shipped as dedup.presets)."""
    try:
        return Path(str(importlib.resources.files("dedup.presets")))
    except ModuleNotFoundError:  # a source tree on PYTHONPATH, not installed
        return Path(__file__).resolve().parents[2] / PRESET_FOLDER


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"config {path} is not valid TOML: {error}") from error


# the commands around a run: a config file may hold their tables beside the run's ([report], [extract], ...)
TOOL_SECTIONS: dict[str, type] = {
    "report": ReportSettings,
    "calibrate": CalibrateSettings,
    "download": DownloadSettings,
    "extract": ExtractSettings,
}


def load_tool_settings(section: str, config: str | None, overrides: list[str] | None, options: dict) -> Any:
    """One command's settings (`section` of TOOL_SECTIONS): defaults, then the config's [section] table, then
    `--set section.key=value`, then the command's own options."""
    settings = TOOL_SECTIONS[section]()
    if config:
        path = preset_path(config)
        fill(settings, read_toml(path).get(section, {}), f"{path} [{section}]")
    for override in overrides or []:
        parsed = parse_override(override)
        if section in parsed:
            fill(settings, parsed[section], f"--set {override}")
    return fill(settings, options.get(section, {}), "command line")


def load_settings(config: str | None = None, overrides: list[str] | None = None) -> RunSettings:
    """Defaults, then the config file or preset, then `section.key=value` overrides. The settings remember
    which embedder their find.threshold was set for, so that validation stops a threshold carried to
    another embedder's vectors."""
    settings = RunSettings()
    if config:
        path = preset_path(config)
        tables = {key: value for key, value in read_toml(path).items() if key not in TOOL_SECTIONS}
        apply(settings, tables, str(path))
    settings.threshold_origin = (settings.embed.embedder, config or "the defaults")
    for override in overrides or []:
        parsed = parse_override(override)
        if not set(parsed) & set(TOOL_SECTIONS):  # a command's own: load_tool_settings reads it
            apply(settings, parsed, f"--set {override}")
    return settings


def apply(settings: RunSettings, values: dict[str, Any], origin: str) -> RunSettings:
    """Apply a nested mapping ({"find": {"threshold": 0.9}, "shards": [...]}) onto settings; `[input] shards`
    is read as `shards` (img2dataset's configs name it so). A threshold set here is set for whatever
    embedder the settings end with."""
    values = dict(values)
    if isinstance(values.get("input"), dict) and set(values["input"]) <= {"shards"}:
        values["shards"] = values.pop("input").get("shards", [])
    if isinstance(values.get("find"), dict) and "threshold" in values["find"]:
        settings.threshold_origin = None
    return fill(settings, values, origin)


def parse_override(text: str) -> dict[str, Any]:
    if "=" not in text:
        raise SettingsError(f"--set {text!r}: write it as section.key=value, e.g. find.threshold=0.9")
    dotted, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    parts = dotted.strip().split(".")
    if len(parts) == 1:
        return {parts[0]: value}
    if len(parts) == 2:
        return {parts[0]: {parts[1]: value}}
    raise SettingsError(f"--set {text!r}: use section.key=value")
