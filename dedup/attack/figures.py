"""verify's figures: extraction by duplicate count with the AUCs, and the closest generations beside their training images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dedup.io.atomic import atomic_open
from dedup.io.runfolder import RunFolder


def save_generations(path: Path, generations: np.ndarray) -> str:
    """The generations as 8-bit images, so an attack can be scored again without sampling again."""
    with atomic_open(path, "wb") as handle:
        np.savez_compressed(handle, generations=(np.clip(generations, 0, 1) * 255).round().astype(np.uint8))
    return str(path)


def write_figures(out_dir: Path, models: dict) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10 + 1.5 * max(0, len(models) - 2), 3.6), dpi=100)
    counts = sorted({c for m in models.values() for c in m["extracted_by_duplicate_count"]} | {1})
    width = 0.8 / len(models)
    offsets = (np.arange(len(models)) - (len(models) - 1) / 2) * width
    for offset, (name, model) in zip(offsets, models.items()):
        left.bar(
            np.arange(len(counts)) + offset,
            [model["extracted_by_duplicate_count"].get(c, 0) for c in counts],
            width,
            label=f"model {name}",
        )
    left.set_xticks(range(len(counts)), [str(c) for c in counts])
    left.set_xlabel("copies of the image in the original training set")
    left.set_ylabel("training images extracted")
    left.legend()
    measures = {
        "membership_auc_duplicated_vs_heldout": "loss: duplicated\nvs held-out",
        "membership_auc_unique_vs_heldout": "loss: unique\nvs held-out",
        "detector_auc_duplicated_vs_unique_prompts": "Wen detector: duplicated\nvs unique captions",
    }
    measures = {key: label for key, label in measures.items() if all(key in m for m in models.values())}
    for offset, (name, model) in zip(offsets, models.items()):
        values = [np.nan if model[key] is None else model[key] for key in measures]
        right.bar(np.arange(len(measures)) + offset, values, width, label=f"model {name}")
    right.axhline(0.5, color="grey", linestyle=":")
    right.set_xticks(range(len(measures)), list(measures.values()), fontsize=8)
    right.set_ylim(0, 1)
    right.set_ylabel("AUC")
    right.legend()
    figure.tight_layout()
    paths = {"extraction_and_membership": str(RunFolder(out_dir).verify_counts_figure)}
    with atomic_open(paths["extraction_and_membership"], "wb") as handle:
        figure.savefig(handle, format="png")
    plt.close(figure)

    rows = [(name, model["_closest"]) for name, model in models.items()]  # closest per training image, extracted or not
    figure, axes = plt.subplots(len(rows) * 2, 8, figsize=(12, 3.2 * len(rows)), dpi=100, squeeze=False)
    for block, (name, pairs) in enumerate(rows):
        for column in range(8):
            top, bottom = axes[2 * block, column], axes[2 * block + 1, column]
            for axis in (top, bottom):
                axis.axis("off")
            if column >= len(pairs):
                continue
            generated, nearest, label, extracted = pairs[column]
            top.imshow(generated, interpolation="nearest")
            bottom.imshow(nearest, interpolation="nearest")
            top.set_title(f"{name}: {label}" + (" *" if extracted else ""), fontsize=7)
    figure.suptitle("closest generation to each of 8 training images (top) beside it (bottom); * = extracted")
    figure.tight_layout()
    paths["closest_pairs"] = str(RunFolder(out_dir).verify_pairs_figure)
    with atomic_open(paths["closest_pairs"], "wb") as handle:
        figure.savefig(handle, format="png")
    plt.close(figure)
    return paths


VERIFY_MEASURES = (
    ("membership AUC, duplicated vs held-out", "membership_auc_duplicated_vs_heldout"),
    ("membership AUC, unique vs held-out", "membership_auc_unique_vs_heldout"),
    ("membership TPR at 1% FPR, duplicated", "membership_tpr_at_1pct_fpr_duplicated"),
    ("membership TPR at 1% FPR, unique", "membership_tpr_at_1pct_fpr_unique"),
    ("Wen detector AUC, duplicated vs unique captions", "detector_auc_duplicated_vs_unique_prompts"),
    ("captions flagged (clique), of the duplicated", "flagged_prompts"),
    ("control captions flagged", "flagged_control_prompts"),
    ("images extracted", "extracted_images"),
    ("generations", "generations"),
)
SEED_MEASURES = (
    ("AUC duplicated, mean of seeds [95% CI]", "auc_duplicated_vs_heldout"),
    ("AUC unique, mean of seeds [95% CI]", "auc_unique_vs_heldout"),
    ("TPR@1%FPR duplicated, mean [95% CI]", "tpr_at_1pct_fpr_duplicated_vs_heldout"),
)


def verify_table(report: dict):
    """verify.json's measures of model A beside the deduplicated models, as a rich table: the first seed's
    measures, then (with several seeds) the means and intervals."""
    from rich.table import Table

    images = report["training_images"]
    names = list(images)
    configs = report.get("arm_configs", {})
    table = Table(
        title="verify: "
        + ", ".join(
            f"{name} ({configs.get(name, '')}{', ' if name in configs else ''}{count} images)"
            for name, count in images.items()
        )
    )
    table.add_column("measure", justify="left")
    for name in names:
        table.add_column(name, justify="right")
    for label, key in VERIFY_MEASURES:
        if key in report["A"]:
            table.add_row(label, *("n/a" if report[m].get(key) is None else str(report[m][key]) for m in names))
    if all("membership_auc_by_group_size" in report[m] for m in names):
        table.add_row(
            "membership AUC by group size (copies + 1)",
            *(", ".join(f"{k}: {v}" for k, v in report[m]["membership_auc_by_group_size"].items()) for m in names),
        )
    table.add_row("training seconds", *(str(report[m]["training"]["seconds"]) for m in names))
    summary = report.get("summary") or {}
    if len(report.get("settings", {}).get("seeds", [])) > 1:
        for label, key in SEED_MEASURES:
            table.add_row(label, *(_interval(summary[m][key]) for m in names))
        table.add_row("images extracted, per seed", *(str(summary[m]["extracted_images"]["per_seed"]) for m in names))
    return table


def _interval(value: dict) -> str:
    return "n/a" if value["mean"] is None else f"{value['mean']} [{value['low']}, {value['high']}]"
