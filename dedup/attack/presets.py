"""Verify presets (configs/verify-NAME.toml): the planted data, the dedup config, the model and the attack."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from dedup.errors import SettingsError
from dedup.settings import AttackSettings, ModelSettings, VerifySettings, build, parse_override, preset_path

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"  # beside a source checkout


def shared_data() -> Path:
    """The real images the verify presets plant into: $DEDUP_SHARED_DATA, else ../shared/data of the checkout."""
    return Path(os.environ.get("DEDUP_SHARED_DATA") or SHARED_DATA)


def load_preset(name: str, overrides: list[str] | None = None) -> dict:
    """A verify preset: configs/verify-NAME.toml (or shipped), or a path, with `section.key=value` overrides.
    `{shared}` in its strings is the shared data folder (`shared_data`)."""
    preset = _read_preset(name)
    for override in overrides or []:
        for section, values in parse_override(override).items():
            if not isinstance(values, dict):
                raise SettingsError(f"--set {override!r}: a verify preset's values are section.key=value")
            current = preset.setdefault(section, {})
            if not isinstance(current, dict):
                raise SettingsError(f"--set {override!r}: {section!r} of preset {name!r} is not a section")
            current.update(values)
    return preset


def _read_preset(name: str) -> dict:
    path = preset_path(name, prefix="verify-")
    text = path.read_text()
    if "{shared}" in text:
        if not shared_data().is_dir():
            raise SettingsError(
                f"verify preset {name!r} reads the shared images at {shared_data()}, which does not exist; "
                "set DEDUP_SHARED_DATA to the folder holding cifar10/ and flickr8k/"
            )
        text = text.replace("{shared}", str(shared_data()))
    return tomllib.loads(text)


PLANT_KEYS = {
    "source",
    "unique",
    "sources",
    "copies",
    "tiers",
    "transforms",
    "shard_size",
    "seed",
    "paraphrase",
    "one_edit_per_source",
    "others",
}


def verify_settings(preset: dict, origin: str) -> VerifySettings:
    from dedup.settings import load_settings

    unknown = set(preset.get("plant", {})) - PLANT_KEYS
    if unknown:
        raise SettingsError(
            f"{origin} [plant] has no {', '.join(sorted(unknown))}; it takes {', '.join(sorted(PLANT_KEYS))}"
        )
    holdout = preset.get("holdout", {})
    model = dict(preset.get("model", {}))
    seeds = model.pop("seeds", [])
    checkpoint_every = model.pop("checkpoint_every", 250)  # not the model's: it changes no weight
    arms = arm_specs((preset.get("dedup") or {}).get("arms", {}), origin)
    if not isinstance(seeds, list) or not all(isinstance(seed, int) for seed in seeds):
        raise SettingsError(f"{origin} [model] seeds must be a list of integers, got {seeds!r}")
    return VerifySettings(
        holdout=[holdout["shards"]] if isinstance(holdout.get("shards"), str) else list(holdout.get("shards", [])),
        holdout_count=holdout.get("count", 500),
        model=build(ModelSettings, model, f"{origin} [model]"),
        attack=build(AttackSettings, preset.get("attack", {}), f"{origin} [attack]"),
        embed=load_settings(dedup_config(preset)).embed,
        arms=arms,
        dedup_config=dedup_config(preset),
        seeds=seeds,
        checkpoint_every=checkpoint_every,
    )


UNSEEN = "unseen"  # an arm with no dedup run: every sample outside the planted duplicate groups
RANDOM = "random"  # an arm with no dedup run: as many samples as another arm keeps, drawn at random


def arm_specs(arms: object, origin: str) -> dict[str, dict]:
    """[dedup] arms as {name: {"config": ..., "set": [...]}}; a plain string names the config alone. Two configs
    are no dedup run: "unseen" trains on every sample outside the planted duplicate groups, so the duplicated
    images are ones its model never saw (the floor their membership signal can fall to); "random" (with
    `like`, B by default) keeps as many samples as arm `like` keeps, drawn uniformly at random, so copies stay
    in proportion: the size control, which asks whether removing that many samples at random helps."""
    problem = (
        f"{origin} [dedup] arms must map names other than A and B to a dedup config or to {{ config, set }} "
        f'(or {{ config = "{RANDOM}", like = ARM }})'
    )
    if not isinstance(arms, dict) or {"A", "B"} & set(arms):
        raise SettingsError(f"{problem}, got {arms!r}")
    specs = {}
    for name, value in arms.items():
        spec = {"config": value, "set": []} if isinstance(value, str) else value
        if (
            not isinstance(spec, dict)
            or not isinstance(spec.get("config"), str)
            or set(spec) - {"config", "set", "like"}
            or ("like" in spec and spec["config"] != RANDOM)
            or not all(isinstance(item, str) for item in spec.get("set", []))
        ):
            raise SettingsError(f"{problem}; arm {name!r} is {value!r}")
        specs[str(name)] = {"config": spec["config"], "set": list(spec.get("set", []))}
        if spec["config"] == RANDOM:
            like = spec.get("like", "B")
            if like not in {"B", *arms} or like == name:
                raise SettingsError(f"{origin} arm {name!r} is sized like {like!r}, which is not B or another arm")
            specs[str(name)]["like"] = like
    return specs


def without_run(spec: dict) -> bool:
    """An arm chosen from the planting or another arm, with no dedup run of its own."""
    return spec["config"] in (UNSEEN, RANDOM)


def dedup_config(preset: dict) -> str:
    return (preset.get("dedup") or {}).get("config", "offline")


def planted_counts(options: dict, origin: str) -> tuple[int, int | list[int]]:
    """[plant] sources and copies, or tiers = [[sources, copies], ...] for heavy-tailed duplication
    (a few images copied hundreds of times, more copied tens of times)."""
    tiers = options.pop("tiers", None)
    if tiers is None:
        sources, copies = options.pop("sources", 10), options.pop("copies", 100)
        if not isinstance(copies, int):
            raise SettingsError(
                f"{origin} [plant] copies must be a number; for several counts use tiers = [[sources, copies], ...]"
            )
        return sources, copies
    if "sources" in options or "copies" in options:
        raise SettingsError(f"{origin} [plant]: give tiers, or sources and copies, not both")
    try:
        copies = [int(count) for sources, count in tiers for _ in range(int(sources))]
    except (TypeError, ValueError):
        raise SettingsError(f"{origin} [plant] tiers must be [[sources, copies], ...], got {tiers!r}") from None
    return len(copies), copies
