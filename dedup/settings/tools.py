"""The settings of the tools around a run: the report and threshold calibration."""

from __future__ import annotations

from dataclasses import dataclass

from dedup.errors import SettingsError
from dedup.settings.base import positive, setting


@dataclass
class ReportSettings:
    max_groups: int = setting(20, "Largest groups shown.")
    max_members: int = setting(8, "Members shown per group.")
    pairs_per_band: int = setting(4, "Pairs shown per similarity band.")
    seed: int = setting(0, "Seed of the pairs sampled per band.")

    def validate(self) -> None:
        positive(max_groups=self.max_groups, max_members=self.max_members, pairs_per_band=self.pairs_per_band)


@dataclass
class CalibrateSettings:
    sample: int = setting(20_000, "Rows sampled from the embeddings (labelled rows always included).")
    low: float = setting(0.80, "Lowest threshold tried.")
    step: float = setting(0.01, "Step between thresholds.")
    seed: int = setting(0, "Seed of the sample.")

    def validate(self) -> None:
        positive(sample=self.sample, step=self.step)
        if not 0.0 < self.low < 1.0:
            raise SettingsError(f"low must be in (0, 1) (a cosine similarity), got {self.low}")
