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


def write_figures(out_dir: Path, models: dict, summary: dict) -> dict:
    """verify-counts.png: each arm's images extracted (every seed a dot, the pooled mean a bar with its 95 %
    interval; "none extracted" in words when so) and its membership AUCs with their intervals;
    verify-pairs.png: the first seed's closest generations beside their training images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(models)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10 + 1.2 * max(0, len(names) - 2), 3.8), dpi=100)
    positions = np.arange(len(names))
    extracted = [summary[name]["extracted_images"] for name in names]
    seeds = max(len(value["per_seed"]) for value in extracted)
    left.bar(positions, [value["mean"] for value in extracted], 0.6, color="tab:blue", alpha=0.5, label="mean of seeds")
    left.errorbar(
        positions,
        [value["mean"] for value in extracted],
        yerr=_error_bars(extracted),
        fmt="none",
        ecolor="black",
        capsize=4,
        label="95 % interval (seeds and images)",
    )
    for position, value in zip(positions, extracted):
        left.scatter([position] * len(value["per_seed"]), value["per_seed"], color="black", s=12, zorder=3)
    left.set_xticks(positions, names)
    left.set_ylabel(f"training images extracted ({seeds} seed{'s' if seeds > 1 else ''}: dots)")
    if all(count == 0 for value in extracted for count in value["per_seed"]):
        left.set_ylim(0, 1)
        left.set_yticks([])
        left.text(0.5, 0.5, "none extracted, by any model", transform=left.transAxes, ha="center", va="center")
    else:
        left.legend(fontsize=7)
    measures = {
        "auc_duplicated_vs_heldout": "loss: duplicated\nvs held-out",
        "auc_unique_vs_heldout": "loss: unique\nvs held-out",
    }
    width = 0.8 / len(names)
    offsets = (positions - (len(names) - 1) / 2) * width
    for offset, name in zip(offsets, names):
        values = [summary[name][key] for key in measures]
        right.bar(
            np.arange(len(measures)) + offset,
            [np.nan if value["mean"] is None else value["mean"] for value in values],
            width,
            yerr=_error_bars(values),
            capsize=3,
            label=f"model {name}",
        )
    if all("detector_auc_duplicated_vs_unique_prompts" in model for model in models.values()):
        right.scatter(
            [len(measures) + offset for offset in offsets],
            [np.nan if models[n]["detector_auc_duplicated_vs_unique_prompts"] is None else models[n]["detector_auc_duplicated_vs_unique_prompts"] for n in names],
            marker="s",
        )  # fmt: skip
        measures["detector"] = "Wen detector, first seed:\nduplicated vs unique captions"
    right.axhline(0.5, color="grey", linestyle=":")
    right.set_xticks(range(len(measures)), list(measures.values()), fontsize=8)
    right.set_ylim(0, 1)
    right.set_ylabel("AUC, mean of seeds [95 %]")
    right.legend(fontsize=7)
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


def write_dose_figure(out_dir: Path, report: dict) -> str:
    """verify-dose.png: images extracted (every seed a dot, the pooled mean with its interval) against the
    samples of each duplicated photo an arm trained on: how much of the copies' effect a setting leaves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dose = report["kept_per_duplicated_image"]
    names = [name for name in report["summary"] if name in dose]
    figure, axis = plt.subplots(figsize=(6.5, 4), dpi=100)
    for name in names:
        extracted = report["summary"][name]["extracted_images"]
        x = dose[name]
        axis.scatter([x] * len(extracted["per_seed"]), extracted["per_seed"], color="black", s=12, zorder=3)
        axis.errorbar([x], [extracted["mean"]], yerr=_error_bars([extracted]), fmt="o", capsize=4)
        axis.annotate(name, (x, extracted["mean"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    axis.set_xscale("symlog", linthresh=1)
    axis.set_xlabel("samples of each duplicated photo trained on (mean over the planted photos)")
    axis.set_ylabel("training images extracted (dots: seeds)")
    figure.tight_layout()
    path = RunFolder(out_dir).verify_dose_figure
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png")
    plt.close(figure)
    return str(path)


def _error_bars(values: list[dict]) -> np.ndarray:
    """Distances from each mean to its interval's ends, as matplotlib's yerr takes them (0 where unknown)."""
    return np.array(
        [
            [0.0, 0.0] if value["mean"] is None else [value["mean"] - value["low"], value["high"] - value["mean"]]
            for value in values
        ]
    ).T


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
        if key in report[names[0]]:
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
        table.add_row("images extracted, mean [95% CI]", *(_interval(summary[m]["extracted_images"]) for m in names))
    for pair, difference in (report.get("differences") or {}).items():
        table.add_row(f"extracted, {pair} (paired) [95% CI]", *([_interval(difference)] + [""] * (len(names) - 1)))
    return table


def _interval(value: dict) -> str:
    return "n/a" if value["mean"] is None else f"{value['mean']} [{value['low']}, {value['high']}]"
