"""`verify`: train model A on the original set and model B on the deduplicated set with the same compute and
seeds, then measure on both what an attacker gets: membership inference (per-image denoising loss, AUC of
duplicated and of unique training images against held-out images) and white-box extraction (generations
whose nearest training image is much nearer than the rest, the paper's CIFAR-10 criterion).
"""
from __future__ import annotations

import json
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from PIL import Image

from dedup.atomic import atomic_open, write_json
from dedup.attack.diffusion import ModelSettings, auc, denoising_losses, sample as generate, train
from dedup.attack.extraction import counts_by_duplicates, white_box
from dedup.errors import InputError, SettingsError
from dedup.imaging import UnreadableImage, decode
from dedup.progress import SILENT, Reporter
from dedup.reader import iter_selected, iter_source
from dedup.sources import expand_shards
from dedup.stages.select import load_manifest

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@dataclass
class AttackSettings:
    generations: int = 512
    alpha: float = 0.5
    neighbours: int = 50
    duplicated_min: int = 10  # a training image is "duplicated" when its group holds at least this many
    unique_sample: int = 500
    seed: int = 0


@dataclass
class VerifySettings:
    holdout: list[str] = field(default_factory=list)
    holdout_count: int = 500
    model: ModelSettings = field(default_factory=ModelSettings)
    attack: AttackSettings = field(default_factory=AttackSettings)


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
    holdout = preset.get("holdout", {})
    return VerifySettings(
        holdout=[holdout["shards"]] if isinstance(holdout.get("shards"), str) else list(holdout.get("shards", [])),
        holdout_count=holdout.get("count", 500),
        model=_fill(ModelSettings, preset.get("model", {}), f"{origin} [model]"),
        attack=_fill(AttackSettings, preset.get("attack", {}), f"{origin} [attack]"),
    )


def load_images(rows: list[tuple[str, int]], resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 3, r, r) in [-1, 1] and class labels (json label_id, else 0), in the order of `rows`."""
    position_of = {place: position for position, place in enumerate(rows)}
    images = np.zeros((len(rows), 3, resolution, resolution), np.float32)
    labels = np.zeros(len(rows), np.int64)
    found = 0
    for sample in iter_selected(rows):
        try:
            image = decode(sample.files).image.resize((resolution, resolution), Image.Resampling.BICUBIC)
        except UnreadableImage:
            continue
        position = position_of[(sample.shard, sample.index)]
        images[position] = np.asarray(image, np.float32).transpose(2, 0, 1) / 127.5 - 1
        if "json" in sample.files:
            try:
                labels[position] = int(json.loads(sample.files["json"]).get("label_id", 0))
            except (ValueError, TypeError, AttributeError):
                pass
        found += 1
    if found != len(rows):
        raise InputError(f"{len(rows) - found} training images could not be read back; did the shards change since the run?")
    return images, labels


def load_holdout(shards: list[str], count: int, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    rows = []
    for url in expand_shards(shards):
        for sample in iter_source(url, on_fault=lambda fault: None):
            rows.append((url, sample.index))
            if len(rows) == count:
                return load_images(rows, resolution)
    return load_images(rows, resolution)


def training_sets(manifest) -> dict:
    readable = manifest.filter(pc.not_equal(manifest["status"], "unreadable"))
    rows = list(zip(readable["shard"].to_pylist(), readable["sample_index"].to_pylist()))
    status = readable["status"].to_pylist()
    sizes = np.array([s or 1 for s in readable["group_size"].to_pylist()], np.int64)
    groups = np.array([g if g is not None else -1 - i for i, g in enumerate(readable["group_id"].to_pylist())], np.int64)
    ranks = np.array([r or 0 for r in readable["rank"].to_pylist()], np.int64)
    return {"rows": rows, "kept": np.array([s == "kept" for s in status]), "group_size": sizes, "group": groups, "rank": ranks}


def _to_unit(images: np.ndarray) -> np.ndarray:
    return ((images.transpose(0, 2, 3, 1) + 1) / 2).clip(0, 1)


def evaluate(model, name: str, train_images, train_labels, sets: dict, holdout, settings: VerifySettings, reporter: Reporter) -> dict:
    attack, model_settings = settings.attack, settings.model
    rng = np.random.default_rng(attack.seed)
    duplicated = np.flatnonzero((sets["group_size"] >= attack.duplicated_min) & (sets["rank"] == 0))
    unique_all = np.flatnonzero(sets["group_size"] == 1)
    unique = np.sort(rng.choice(unique_all, min(attack.unique_sample, len(unique_all)), replace=False))
    holdout_images, holdout_labels = holdout
    loss = lambda rows: denoising_losses(model, train_images[rows], train_labels[rows], model_settings)  # noqa: E731
    holdout_loss = denoising_losses(model, holdout_images, holdout_labels, model_settings)
    duplicated_loss, unique_loss = loss(duplicated), loss(unique)
    started = time.perf_counter()
    labels = rng.integers(0, max(1, model_settings.classes), attack.generations) if model_settings.classes else None
    generations = generate(model, model_settings, attack.generations, labels, seed=attack.seed + 1)
    sampling_seconds = time.perf_counter() - started
    result = white_box(generations.reshape(len(generations), -1), _to_unit(train_images).reshape(len(train_images), -1),
                       attack.alpha, attack.neighbours)
    extracted_groups = sorted({int(sets["group"][row]) for row in result.unique_extracted})
    first_row_of_group = {int(g): row for row, g in reversed(list(enumerate(sets["group"])))}
    reporter.info(f"verify {name}: AUC duplicated {auc(duplicated_loss, holdout_loss):.3f}, unique {auc(unique_loss, holdout_loss):.3f}; "
                  f"{len(extracted_groups)} images extracted from {attack.generations} generations")
    return {
        "membership_auc_duplicated_vs_heldout": round(auc(duplicated_loss, holdout_loss), 4),
        "membership_auc_unique_vs_heldout": round(auc(unique_loss, holdout_loss), 4),
        "duplicated_images": int(len(duplicated)),
        "unique_images_sampled": int(len(unique)),
        "heldout_images": int(len(holdout_loss)),
        "generations": attack.generations,
        "extracted_generations": int(result.extracted.sum()),
        "extracted_images": len(extracted_groups),
        "extracted_by_duplicate_count": counts_by_duplicates([first_row_of_group[g] for g in extracted_groups], sets["group_size"]),
        "lowest_ratios": [round(float(r), 4) for r in np.sort(result.ratio)[:10]],
        "sampling_seconds": round(sampling_seconds, 1),
        "_generations": generations,
        "_nearest": result.nearest,
        "_ratio": result.ratio,
    }


def verify(run_dir: str | Path, settings: VerifySettings, out_dir: str | Path | None = None, reporter: Reporter = SILENT) -> dict:
    """Train A (original) and B (deduplicated) and attack both; write verify.json and figures."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir
    if not settings.holdout:
        raise SettingsError("verify needs held-out images (holdout shards) to measure membership against")
    started = time.perf_counter()
    manifest = load_manifest(run_dir)
    sets = training_sets(manifest)
    model_settings = settings.model
    images, labels = load_images(sets["rows"], model_settings.resolution)
    holdout = load_holdout(settings.holdout, settings.holdout_count, model_settings.resolution)
    report = {"run_dir": str(run_dir), "settings": {"model": asdict(model_settings), "attack": asdict(settings.attack),
                                                     "holdout": settings.holdout, "holdout_count": settings.holdout_count},
              "training_images": {"A": int(len(images)), "B": int(sets["kept"].sum())}}
    models = {}
    for name, rows in (("A", np.arange(len(images))), ("B", np.flatnonzero(sets["kept"]))):
        reporter.info(f"verify: training model {name} on {len(rows)} images ({model_settings.train_steps} steps)")
        model, stats = train(images[rows], labels[rows], model_settings, log=lambda m, n=name: reporter.info(f"  {n} {m}"))
        models[name] = {"training": stats, **evaluate(model, name, images, labels, sets, holdout, settings, reporter)}
    figures = write_figures(out_dir, models, images, sets)
    report.update({name: {k: v for k, v in value.items() if not k.startswith("_")} for name, value in models.items()})
    extracted_a, extracted_b = report["A"]["extracted_images"], report["B"]["extracted_images"]
    report["extracted_reduction"] = None if extracted_a == 0 else round(1 - extracted_b / extracted_a, 4)
    report["figures"] = figures
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_json(out_dir / "verify.json", report)
    return report


def write_figures(out_dir: Path, models: dict, images: np.ndarray, sets: dict) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    counts = sorted({c for m in models.values() for c in m["extracted_by_duplicate_count"]} | {1})
    width = 0.4
    for offset, (name, model) in zip((-width / 2, width / 2), models.items()):
        left.bar(np.arange(len(counts)) + offset, [model["extracted_by_duplicate_count"].get(c, 0) for c in counts], width, label=f"model {name}")
    left.set_xticks(range(len(counts)), [str(c) for c in counts])
    left.set_xlabel("copies of the image in the original training set")
    left.set_ylabel("training images extracted")
    left.legend()
    labels = ["duplicated vs held-out", "unique vs held-out"]
    for offset, (name, model) in zip((-width / 2, width / 2), models.items()):
        right.bar(np.arange(2) + offset, [model["membership_auc_duplicated_vs_heldout"], model["membership_auc_unique_vs_heldout"]], width, label=f"model {name}")
    right.axhline(0.5, color="grey", linestyle=":")
    right.set_xticks(range(2), labels)
    right.set_ylim(0, 1)
    right.set_ylabel("membership AUC")
    right.legend()
    figure.tight_layout()
    paths = {"extraction_and_membership": str(out_dir / "verify-counts.png")}
    with atomic_open(paths["extraction_and_membership"], "wb") as handle:
        figure.savefig(handle, format="png")
    plt.close(figure)

    train_unit = _to_unit(images)
    rows = []
    for name, model in models.items():
        order = np.argsort(model["_ratio"])[:8]  # the 8 closest generations, extracted or not
        rows.append((name, [(model["_generations"][i], train_unit[model["_nearest"][i]], model["_ratio"][i]) for i in order]))
    figure, axes = plt.subplots(len(rows) * 2, 8, figsize=(12, 3.2 * len(rows)), dpi=100)
    for block, (name, pairs) in enumerate(rows):
        for column, (generated, nearest, ratio) in enumerate(pairs):
            top, bottom = axes[2 * block, column], axes[2 * block + 1, column]
            top.imshow(generated, interpolation="nearest")
            bottom.imshow(nearest, interpolation="nearest")
            top.set_title(f"{name}: ratio {ratio:.2f}" + (" *" if ratio < 0.5 else ""), fontsize=7)
            for axis in (top, bottom):
                axis.axis("off")
    figure.suptitle("closest generations (top) beside their nearest training image (bottom); * = extracted")
    figure.tight_layout()
    paths["closest_pairs"] = str(out_dir / "verify-pairs.png")
    with atomic_open(paths["closest_pairs"], "wb") as handle:
        figure.savefig(handle, format="png")
    plt.close(figure)
    return paths
