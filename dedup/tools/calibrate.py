"""`calibrate`: how many groups and removals each embedding threshold gives, on a sample of the embeddings;
with labelled pairs, precision and recall per threshold; and a suggested threshold with its reason."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dedup.errors import InputError, require_extra
from dedup.io.atomic import read_parquet, write_json
from dedup.io.runfolder import RunFolder
from dedup.io.store import EmbeddingStore
from dedup.search import matching
from dedup.search.grouping import connected_groups
from dedup.search.signals import cosine
from dedup.settings import CalibrateSettings, FindSettings
from dedup.tools.planting import found_pairs, planted_pairs


def threshold_grid(low: float = 0.80, step: float = 0.01) -> tuple[float, ...]:
    """Thresholds from `low` up to (not including) 1, `step` apart."""
    return tuple(round(float(t), 4) for t in np.arange(low, 0.9999, step))


@dataclass
class Calibration:
    sample_rows: int
    total_rows: int
    rows: list[dict] = field(default_factory=list)
    suggested: float | None = None
    reason: str = ""

    def to_json(self) -> dict:
        return {
            "sample_rows": self.sample_rows,
            "total_rows": self.total_rows,
            "thresholds": self.rows,
            "suggested_threshold": self.suggested,
            "reason": self.reason,
        }


def load_labels(path: str | Path) -> tuple[set, set]:
    """Positive and negative pairs of keys. Accepts planted.json ({"groups": [[key, ...], ...]}), or a
    CSV/parquet/JSON-lines table with columns a, b and duplicate (true/false)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"labels file {path} does not exist")
    if path.suffix == ".json":
        payload = json.loads(path.read_text())
        if isinstance(payload, dict) and "groups" in payload:
            return planted_pairs(payload["groups"]), set()
        raise InputError(f'{path}: a .json labels file must hold {{"groups": [[key, ...], ...]}} as planted.json does')
    if path.suffix == ".parquet":
        table = read_parquet(path)
    elif path.suffix == ".csv":
        import pyarrow.csv as pcsv

        table = pcsv.read_csv(path)
    else:
        raise InputError(
            f"{path}: labels must be .json (planted groups), .csv or .parquet with columns a, b, duplicate"
        )
    missing = {"a", "b", "duplicate"} - set(table.column_names)
    if missing:
        raise InputError(f"{path}: missing columns {sorted(missing)}; need a, b, duplicate")
    positive: set[tuple[str, str]] = set()
    negative: set[tuple[str, str]] = set()
    for a, b, label in zip(table["a"].to_pylist(), table["b"].to_pylist(), table["duplicate"].to_pylist()):
        if label is None:  # a relation named in review, no verdict
            continue
        pair = (min(str(a), str(b)), max(str(a), str(b)))
        (positive if label in (True, 1, "true", "True", "1") else negative).add(pair)
    return positive, negative


def calibrate(
    store_dir: str | Path,
    out_dir: str | Path | None = None,
    labels: str | Path | None = None,
    settings: CalibrateSettings | None = None,
) -> Calibration:
    require_extra("matplotlib", "report", "dedup calibrate (its plot)")
    settings = settings or CalibrateSettings()
    settings.validate()
    thresholds, sample, seed = threshold_grid(settings.low, settings.step), settings.sample, settings.seed
    data = EmbeddingStore(store_dir).load()
    keys = np.asarray(data.metadata["key"].to_pylist(), dtype=object)
    total = len(keys)
    positive, negative = load_labels(labels) if labels else (set(), set())
    labelled = {k for pair in positive | negative for k in pair}
    rng = np.random.default_rng(seed)
    must = np.flatnonzero(np.isin(keys, list(labelled))) if labelled else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(total), must)
    chosen = np.sort(
        np.concatenate([must, rng.choice(rest, min(len(rest), max(0, sample - len(must))), replace=False)])
    )
    vectors = np.ascontiguousarray(data.embeddings[chosen], dtype=np.float32)
    a, b, _ = matching.embedding_pairs(vectors, min(thresholds), FindSettings(phash_radius=None, index="auto"))
    similarity = cosine(vectors, vectors, a, b)
    sample_keys = keys[chosen].tolist()
    result = Calibration(sample_rows=len(chosen), total_rows=total)
    for threshold in sorted(thresholds):
        keep = similarity >= threshold
        group_id, group_size = connected_groups(len(chosen), a[keep], b[keep])
        in_groups = int((group_size > 1).sum())
        groups = int(len(np.unique(group_id[group_size > 1])))
        row = {
            "threshold": threshold,
            "pairs": int(keep.sum()),
            "groups": groups,
            "samples_in_groups": in_groups,
            "removed": in_groups - groups,
            "removed_fraction": round((in_groups - groups) / max(1, len(chosen)), 5),
        }
        if positive:
            found = found_pairs(sample_keys, group_id.tolist())
            touching = {p for p in found if p[0] in labelled or p[1] in labelled}
            false = (touching - positive) if not negative else (found & negative)
            true = found & positive
            row["recall"] = round(len(true) / len(positive), 4)
            row["precision"] = round(len(true) / max(1, len(true) + len(false)), 4)
            row["f1"] = round(2 * row["recall"] * row["precision"] / max(1e-9, row["recall"] + row["precision"]), 4)
        result.rows.append(row)
    suggest(result, bool(positive))
    if out_dir:
        out_dir = Path(out_dir)
        write_json(RunFolder(out_dir).calibration, result.to_json())
        plot(result, RunFolder(out_dir).calibration_plot)
    return result


def suggest(result: Calibration, labelled: bool) -> None:
    rows = result.rows
    if labelled:
        best = max(rows, key=lambda r: (r["f1"], r["threshold"]))
        result.suggested = best["threshold"]
        result.reason = f"highest F1 on the labelled pairs: precision {best['precision']}, recall {best['recall']}"
        return
    # without labels: duplicates sit at high similarity and their count plateaus; below the plateau,
    # unrelated images start to merge and removals climb. Suggest the lowest threshold still on the plateau.
    by_threshold = {r["threshold"]: r["removed"] for r in rows}
    ordered = sorted(by_threshold)
    suggested, reason = ordered[-1], "no plateau found; the strictest threshold tried"
    for lower, upper in zip(ordered[::-1][1:], ordered[::-1]):
        if by_threshold[lower] > 1.1 * by_threshold[upper] + 2:
            break
        suggested = lower
        reason = (
            f"removals stay flat from {ordered[-1]} down to {lower} ({by_threshold[ordered[-1]]} -> {by_threshold[lower]}); "
            "below it they start to climb, the sign of unrelated images merging"
        )
    result.suggested, result.reason = suggested, reason


def plot(result: Calibration, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dedup.io.atomic import atomic_open

    thresholds = [r["threshold"] for r in result.rows]
    figure, left = plt.subplots(figsize=(7, 4), dpi=110)
    left.plot(thresholds, [r["removed"] for r in result.rows], marker="o", label="samples removed")
    left.plot(thresholds, [r["groups"] for r in result.rows], marker="s", label="duplicate groups")
    left.set_xlabel("cosine similarity threshold")
    left.set_ylabel(f"count (sample of {result.sample_rows})")
    if "precision" in result.rows[0]:
        right = left.twinx()
        right.plot(
            thresholds, [r["precision"] for r in result.rows], color="tab:green", linestyle="--", label="precision"
        )
        right.plot(thresholds, [r["recall"] for r in result.rows], color="tab:red", linestyle="--", label="recall")
        right.set_ylim(0, 1.02)
        right.set_ylabel("precision / recall")
        right.legend(loc="center right")
    if result.suggested is not None:
        left.axvline(result.suggested, color="grey", linestyle=":")
    left.legend(loc="upper left")
    figure.tight_layout()
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png")
    plt.close(figure)


def calibration_table(result: Calibration, labelled: bool):
    """The thresholds as a rich table, the suggested one highlighted."""
    from rich.table import Table

    columns = ["threshold", "pairs", "groups", "removed", "removed_fraction"] + (
        ["precision", "recall", "f1"] if labelled else []
    )
    table = Table(title=f"thresholds on {result.sample_rows:,} of {result.total_rows:,} samples")
    for column in columns:
        table.add_column(column, justify="right")
    for row in result.rows:
        table.add_row(
            *[str(row[c]) for c in columns], style="bold green" if row["threshold"] == result.suggested else None
        )
    return table
