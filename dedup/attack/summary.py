"""verify.json's figures over seeds: means with bootstrap intervals over seeds and images, the images
extracted pooled, and paired differences between arms."""

from __future__ import annotations

from typing import Any

import numpy as np

from dedup.attack.statistics import (
    MEASURES,
    extraction_indicators,
    pooled_count_with_interval,
    seed_mean_with_interval,
)


def public(measured: dict) -> dict:
    return {key: value for key, value in measured.items() if not key.startswith("_")}


def scalars(measured: dict) -> dict:
    return {
        key: value
        for key, value in public(measured).items()
        if isinstance(value, int | float)
        or value is None
        or key in ("membership_auc_by_group_size", "extracted_image_ids", "extracted_by_duplicate_count")
    }


def seed_summary(measured_by_seed: list[dict], images: np.ndarray) -> dict:
    """Means over seeds with 95 % bootstrap intervals over seeds and images, for each membership measure and
    for the images extracted (out of `images`, the ids every arm is scored on)."""
    summary: dict[str, Any] = {}
    heldout = [m["_losses"]["heldout"] for m in measured_by_seed]
    for group in ("duplicated", "unique"):
        members = [m["_losses"][group] for m in measured_by_seed]
        for measure in MEASURES:
            summary[f"{measure}_{group}_vs_heldout"] = seed_mean_with_interval(members, heldout, measure)
    sizes = measured_by_seed[0]["_losses"]["by_size"]
    summary["auc_by_group_size"] = {
        str(size): seed_mean_with_interval([m["_losses"]["by_size"][size] for m in measured_by_seed], heldout, "auc")
        for size in sizes
    }
    extracted = extraction_indicators([m["extracted_image_ids"] for m in measured_by_seed], images)
    summary["extracted_images"] = pooled_count_with_interval(extracted)
    if all("false_extracted_images" in m for m in measured_by_seed):
        summary["false_extracted_images"] = [m["false_extracted_images"] for m in measured_by_seed]
    return summary


def paired_differences(by_seed: dict[str, list[dict]], images: np.ndarray) -> dict:
    """Images extracted, arm minus arm, seed by seed and image by image (the same bootstrap draw for both):
    every arm minus B, and A minus every other deduplicated arm."""
    indicators = {
        name: extraction_indicators([m["extracted_image_ids"] for m in values], images)
        for name, values in by_seed.items()
    }
    pairs = [(name, "B") for name in indicators if name != "B"]
    pairs += [("A", name) for name in indicators if name not in ("A", "B")]
    return {
        f"{first} - {second}": pooled_count_with_interval(indicators[first], minus=indicators[second])
        for first, second in pairs
        if first in indicators and second in indicators
    }


def extracted_reduction(summary: dict) -> float | None:
    """1 - B / A of the images extracted, pooled over seeds (None without both, or when A extracts none)."""
    if "A" not in summary or "B" not in summary:
        return None
    extracted_a, extracted_b = summary["A"]["extracted_images"]["mean"], summary["B"]["extracted_images"]["mean"]
    return None if not extracted_a else round(1 - extracted_b / extracted_a, 4)
