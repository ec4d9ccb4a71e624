"""Verify presets (configs/verify-NAME.toml): the planted data, the dedup config, the model and the attack."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from dedup.attack.diffusion import ModelSettings
from dedup.errors import SettingsError
from dedup.settings import EmbedSettings

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@dataclass
class AttackSettings:
    generations: int = 512  # white box: samples drawn from an unconditional or class-conditional model
    alpha: float = 0.5
    neighbours: int = 50
    duplicated_min: int = 10  # a training image is "duplicated" when its group holds at least this many
    unique_sample: int = 500
    seed: int = 0
    # black box, caption-conditioned models (the paper's Stable Diffusion attack)
    prompts: int = 20  # captions of the largest duplicate groups
    control_prompts: int = 20  # captions of images without duplicates: the detector's negatives
    generations_per_prompt: int = 16
    delta: float = 0.15  # tiled l2 within which two images count as the same
    min_clique: int = 5
    grid: int = 4
    candidates: int = 5  # nearest training images (by the store's embeddings) checked per generation
    detector_repeats: int = 4
    detector_steps: int = 1


@dataclass
class VerifySettings:
    holdout: list[str] = field(default_factory=list)
    holdout_count: int = 500
    model: ModelSettings = field(default_factory=ModelSettings)
    attack: AttackSettings = field(default_factory=AttackSettings)
    embed: EmbedSettings | None = None  # the run's embedder, to confirm generations through its store


def _fill(cls, values: dict, origin: str):
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise SettingsError(f"{origin}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    if cls is ModelSettings and "channels" in values:
        values = {**values, "channels": tuple(values["channels"])}
    return cls(**values)


def load_preset(name: str) -> dict:
    """A verify preset: configs/verify-NAME.toml, or a path. `{shared}` in strings is ../shared/data."""
    path = Path(name)
    if not path.is_file():
        for folder in (Path("configs"), Path(__file__).resolve().parents[2] / "configs"):
            if (folder / f"verify-{name}.toml").is_file():
                path = folder / f"verify-{name}.toml"
                break
        else:
            raise SettingsError(f"verify preset {name!r} not found (configs/verify-{name}.toml)")
    text = path.read_text().replace("{shared}", str(SHARED_DATA))
    return tomllib.loads(text)


def verify_settings(preset: dict, origin: str) -> VerifySettings:
    from dedup.settings import load_settings

    holdout = preset.get("holdout", {})
    return VerifySettings(
        holdout=[holdout["shards"]] if isinstance(holdout.get("shards"), str) else list(holdout.get("shards", [])),
        holdout_count=holdout.get("count", 500),
        model=_fill(ModelSettings, preset.get("model", {}), f"{origin} [model]"),
        attack=_fill(AttackSettings, preset.get("attack", {}), f"{origin} [attack]"),
        embed=load_settings(dedup_config(preset)).embed,
    )


def dedup_config(preset: dict) -> str:
    return (preset.get("dedup") or {}).get("config", "offline")


def planted_counts(options: dict, origin: str) -> tuple[int, int | list[int]]:
    """[plant] sources and copies, or tiers = [[sources, copies], ...] for heavy-tailed duplication
    (a few images copied hundreds of times, more copied tens of times)."""
    tiers = options.pop("tiers", None)
    if tiers is None:
        sources, copies = options.pop("sources", 10), options.pop("copies", 100)
        if not isinstance(copies, int):
            raise SettingsError(f"{origin} [plant] copies must be a number; for several counts use tiers = [[sources, copies], ...]")
        return sources, copies
    if "sources" in options or "copies" in options:
        raise SettingsError(f"{origin} [plant]: give tiers, or sources and copies, not both")
    try:
        copies = [int(count) for sources, count in tiers for _ in range(int(sources))]
    except (TypeError, ValueError):
        raise SettingsError(f"{origin} [plant] tiers must be [[sources, copies], ...], got {tiers!r}") from None
    return len(copies), copies
