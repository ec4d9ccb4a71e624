"""`verify`: train model A on the original set and model B on the deduplicated set with the same compute and
seeds, then measure on both what an attacker gets:

- membership inference: per-image denoising loss, AUC of duplicated and of unique training images against
  held-out images (the paper's CIFAR-10 signal, which shows long before extraction does);
- unconditional or class-conditional models: white-box extraction (a generation whose nearest training image
  is much nearer than the rest, the paper's CIFAR-10 criterion);
- caption-conditioned models: the black-box generate-and-filter attack on the captions of the largest
  duplicate groups (clique of near-identical generations, confirmed against the training set through the
  run's embedding store), and the Wen et al. detector (text-conditional noise magnitude) on every caption.
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
from dedup.attack.diffusion import (ModelSettings, auc, denoising_losses, sample as generate, text_guidance_magnitude,
                                    train)
from dedup.attack.extraction import counts_by_duplicates, generate_and_filter, white_box
from dedup.attack.text import CaptionVocabulary
from dedup.errors import InputError, SettingsError
from dedup.imaging import UnreadableImage, decode
from dedup.progress import SILENT, Reporter
from dedup.reader import iter_selected, iter_source
from dedup.settings import EmbedSettings
from dedup.sources import expand_shards
from dedup.runfiles import load_manifest

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


@dataclass
class Images:
    images: np.ndarray  # (n, 3, r, r) in [-1, 1]
    labels: np.ndarray  # class ids (json label_id, else 0)
    captions: list[str]  # .txt, else json caption, else ""

    def take(self, rows) -> "Images":
        rows = np.asarray(rows)
        return Images(self.images[rows], self.labels[rows], [self.captions[i] for i in rows])


def _caption(files: dict, meta: dict) -> str:
    if "txt" in files:
        return files["txt"].decode("utf-8", "replace").strip()
    return str(meta.get("caption") or "")


def load_images(rows: list[tuple[str, int]], resolution: int) -> Images:
    """The images at `rows` ((shard, sample_index)), in that order, with their labels and captions."""
    position_of = {place: position for position, place in enumerate(rows)}
    images = np.zeros((len(rows), 3, resolution, resolution), np.float32)
    labels = np.zeros(len(rows), np.int64)
    captions = [""] * len(rows)
    found = 0
    for sample in iter_selected(rows):
        try:
            image = decode(sample.files).image.resize((resolution, resolution), Image.Resampling.BICUBIC)
        except UnreadableImage:
            continue
        position = position_of[(sample.shard, sample.index)]
        images[position] = np.asarray(image, np.float32).transpose(2, 0, 1) / 127.5 - 1
        try:
            meta = json.loads(sample.files.get("json", b"{}"))
            meta = meta if isinstance(meta, dict) else {}
        except ValueError:
            meta = {}
        try:
            labels[position] = int(meta.get("label_id", 0))
        except (ValueError, TypeError):
            pass
        captions[position] = _caption(sample.files, meta)
        found += 1
    if found != len(rows):
        raise InputError(f"{len(rows) - found} training images could not be read back; did the shards change since the run?")
    return Images(images, labels, captions)


def load_holdout(shards: list[str], count: int, resolution: int) -> Images:
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


class Conditioning:
    """Turns labels and captions into what the model is conditioned on (None, class ids or caption tokens)."""

    def __init__(self, settings: ModelSettings, training_captions: list[str]):
        self.settings = settings
        self.vocabulary = (CaptionVocabulary.build(training_captions, settings.vocabulary_size, settings.max_words)
                           if settings.captions else None)

    def of(self, data: Images) -> np.ndarray | None:
        return self.tokens(data.captions) if self.vocabulary else data.labels if self.settings.classes else None

    def tokens(self, captions: list[str]) -> np.ndarray:
        return self.vocabulary.encode(captions)

    @property
    def empty(self) -> np.ndarray | None:
        return self.vocabulary.empty()[0] if self.vocabulary else None

    @property
    def vocabulary_length(self) -> int:
        return len(self.vocabulary) if self.vocabulary else 0


def _auc(members: np.ndarray, others: np.ndarray) -> float | None:
    return round(auc(members, others), 4) if len(members) and len(others) else None


def membership(model, data: Images, conditioning: Conditioning, sets: dict, holdout: Images, attack: AttackSettings) -> dict:
    """Loss-based membership AUC of the duplicated images (one per group) and of a sample of unique ones."""
    rng = np.random.default_rng(attack.seed)
    duplicated = np.flatnonzero((sets["group_size"] >= attack.duplicated_min) & (sets["rank"] == 0))
    unique_all = np.flatnonzero(sets["group_size"] == 1)
    unique = np.sort(rng.choice(unique_all, min(attack.unique_sample, len(unique_all)), replace=False))
    loss = lambda images: denoising_losses(model, images.images, conditioning.of(images))  # noqa: E731
    holdout_loss = loss(holdout)
    return {
        "membership_auc_duplicated_vs_heldout": _auc(loss(data.take(duplicated)), holdout_loss),
        "membership_auc_unique_vs_heldout": _auc(loss(data.take(unique)), holdout_loss),
        "duplicated_images": int(len(duplicated)),
        "unique_images_sampled": int(len(unique)),
        "heldout_images": int(len(holdout_loss)),
    }


def closest_per_image(order, training_image_of, count: int = 8) -> list[int]:
    """The first `count` generations in `order` whose training images differ (`training_image_of`: one id per
    image, its duplicate group): the figure shows 8 images, not 8 copies of the most memorized one."""
    chosen, seen = [], set()
    for i in order:
        if training_image_of[i] not in seen:
            seen.add(training_image_of[i])
            chosen.append(i)
            if len(chosen) == count:
                break
    return chosen


def white_box_per_group(generations: np.ndarray, training: np.ndarray, rank: np.ndarray, alpha: float, neighbours: int):
    """White-box extraction against one image per duplicate group (rank 0): an image's own copies are not
    the "other training images" the ratio compares with, or an image held 300 times could never count as
    extracted. Returns the result, each generation's nearest training row, and the reference rows."""
    references = np.flatnonzero(rank == 0)
    result = white_box(generations.reshape(len(generations), -1), training[references].reshape(len(references), -1),
                       alpha, neighbours)
    return result, references[result.nearest], references


def white_box_attack(model, data: Images, conditioning: Conditioning, sets: dict, attack: AttackSettings) -> dict:
    """Samples from the model; extracted when the nearest training image is much nearer than the rest."""
    rng = np.random.default_rng(attack.seed + 1)
    classes = model.settings.classes
    labels = rng.integers(0, classes, attack.generations) if classes else None
    started = time.perf_counter()
    generations = generate(model, attack.generations, labels, seed=attack.seed + 1)
    sampling_seconds = time.perf_counter() - started
    train_unit = _to_unit(data.images)
    result, nearest, references = white_box_per_group(generations, train_unit, sets["rank"], attack.alpha, attack.neighbours)
    extracted_rows = sorted({int(row) for row in nearest[result.extracted]})
    closest = [(generations[i], train_unit[nearest[i]], f"ratio {result.ratio[i]:.2f}", bool(result.extracted[i]))
               for i in closest_per_image(np.argsort(result.ratio), nearest)]
    return {
        "attack": "white box: relative l2 ratio",
        "generations": attack.generations,
        "extracted_generations": int(result.extracted.sum()),
        "extracted_images": len(extracted_rows),
        "extracted_by_duplicate_count": counts_by_duplicates(extracted_rows, sets["group_size"]),
        "lowest_ratios": [round(float(r), 4) for r in np.sort(result.ratio)[:10]],
        "reference_images": int(len(references)),
        "sampling_seconds": round(sampling_seconds, 1),
        "_closest": closest,
        "_generations": generations,
    }


def black_box_attack(model, data: Images, conditioning: Conditioning, sets: dict, prompts: list, controls: list,
                     attack: AttackSettings, store_dir: Path, embedder) -> dict:
    """Generate-and-filter on the captions of the largest duplicate groups (and control captions), confirm the
    flagged cliques through the run's embedding store, and score every caption with the Wen et al. detector."""
    from dedup.attack.confirm import nearest_training_images

    captions = [p.caption for p in prompts + controls]
    per_prompt = attack.generations_per_prompt
    started = time.perf_counter()
    tokens = conditioning.tokens(captions)
    generations = generate(model, len(captions) * per_prompt, np.repeat(tokens, per_prompt, axis=0), conditioning.empty,
                           seed=attack.seed + 1)
    sampling_seconds = time.perf_counter() - started
    by_prompt = {str(i): generations[i * per_prompt:(i + 1) * per_prompt] for i in range(len(captions))}
    position_of = {place: row for row, place in enumerate(sets["rows"])}
    train_unit = _to_unit(data.images)

    def from_memory(places, side):
        return train_unit[[position_of[place] for place in places]]

    result = generate_and_filter(
        by_prompt, lambda images: nearest_training_images(images, store_dir, embedder, attack.grid, attack.candidates, from_memory),
        attack.delta, attack.min_clique, attack.grid)
    extracted_rows = sorted({position_of[place] for place in result.extracted_places})
    extracted_groups = sorted({int(sets["group"][row]) for row in extracted_rows})
    first_row_of_group = {int(sets["group"][row]): row for row in reversed(extracted_rows)}
    scores = text_guidance_magnitude(model, tokens, conditioning.empty, attack.detector_repeats, attack.detector_steps)
    is_control = np.arange(len(captions)) >= len(prompts)
    matches = [(int(p), m) for p, found in result.nearest.items() for m in found]
    matches.sort(key=lambda item: item[1].tiled_l2)
    closest = [(by_prompt[str(p)][m.generation], train_unit[position_of[(m.shard, m.sample_index)]], f"l2 {m.tiled_l2:.2f}",
                m in result.extracted[str(p)])
               for p, m in (matches[i] for i in closest_per_image(
                   range(len(matches)), [int(sets["group"][position_of[(m.shard, m.sample_index)]]) for _, m in matches]))]
    return {
        "attack": "black box: generate-and-filter, confirmed through the embedding store",
        "prompts": len(prompts),
        "control_prompts": len(controls),
        "generations": int(len(generations)),
        "flagged_prompts": sum(1 for p in result.flagged if not is_control[int(p)]),
        "flagged_control_prompts": sum(1 for p in result.flagged if is_control[int(p)]),
        "extracted_generations": sum(len(found) for found in result.extracted.values()),
        "extracted_images": len(extracted_groups),
        "extracted_by_duplicate_count": counts_by_duplicates([first_row_of_group[g] for g in extracted_groups], sets["group_size"]),
        "lowest_tiled_l2": [round(m.tiled_l2, 4) for _, m in matches[:10]],
        "detector_auc_duplicated_vs_unique_prompts": _auc(-scores[~is_control], -scores[is_control]),
        "per_prompt": [{"caption": caption, "copies": (prompts + controls)[i].group_size,
                        "largest_clique": len(result.flagged.get(str(i), [])), "extracted": len(result.extracted[str(i)]),
                        "detector_score": round(float(scores[i]), 4)} for i, caption in enumerate(captions)],
        "sampling_seconds": round(sampling_seconds, 1),
        "_closest": closest,
        "_generations": generations,
    }


def trained_model(path: Path, name: str, data: Images, rows: np.ndarray, conditions: np.ndarray | None,
                  conditioning: Conditioning, places: list, settings: ModelSettings, reporter: Reporter):
    """Model `name` trained on `rows`, or the one a previous verify saved at `path` for the same settings,
    training samples and vocabulary: a rerun after an interruption or a scoring change skips training."""
    import hashlib

    import torch

    from dedup.attack.diffusion import Denoiser, pick_device

    identity = json.dumps({"settings": asdict(settings), "places": hashlib.sha256(json.dumps(places).encode()).hexdigest(),
                           "vocabulary": conditioning.vocabulary.to_json() if conditioning.vocabulary else None},
                          sort_keys=True, default=str)
    length = conditions.shape[1] if settings.captions else 0
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("identity") == identity:
            reporter.info(f"verify: reusing model {name} from {path} (same settings and training samples)")
            model = Denoiser(settings, conditioning.vocabulary_length, length)
            model.load_state_dict(saved["state"])
            return model.to(pick_device(settings.device)).eval(), json.loads(saved["stats"])
    reporter.info(f"verify: training model {name} on {len(rows)} images ({settings.train_steps} steps)")
    model, stats = train(data.images[rows], None if conditions is None else conditions[rows], settings,
                         log=lambda message: reporter.info(f"  {name} {message}"),
                         vocabulary_length=conditioning.vocabulary_length, empty_caption=conditioning.empty)
    with atomic_open(path, "wb") as handle:
        torch.save({"identity": identity, "state": model.state_dict(), "stats": json.dumps(stats, default=str)}, handle)
    return model, stats


def verify(run_dir: str | Path, settings: VerifySettings, out_dir: str | Path | None = None, reporter: Reporter = SILENT) -> dict:
    """Train A (original) and B (deduplicated) and attack both; write verify.json and figures."""
    from dedup.attack.prompts import largest_group_prompts, unique_image_prompts
    from dedup.embedders import build_embedder

    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir
    if not settings.holdout:
        raise SettingsError("verify needs held-out images (holdout shards) to measure membership against")
    model_settings, attack = settings.model, settings.attack
    if model_settings.captions and settings.embed is None:
        raise SettingsError("a caption-conditioned verify confirms generations through the run's embedding store: "
                            "give the run's embed settings (the preset's [dedup] config)")
    started = time.perf_counter()
    sets = training_sets(load_manifest(run_dir))
    data = load_images(sets["rows"], model_settings.resolution)
    holdout = load_holdout(settings.holdout, settings.holdout_count, model_settings.resolution)
    conditioning = Conditioning(model_settings, data.captions)
    if model_settings.captions and not any(data.captions):
        raise InputError(f"the preset trains a caption-conditioned model, but none of the {len(data.captions)} training "
                         "samples has a caption (KEY.txt, or caption in KEY.json); use a preset without captions = true")
    if model_settings.captions:
        prompts = largest_group_prompts(run_dir, attack.prompts)
        controls = unique_image_prompts(run_dir, attack.control_prompts, attack.seed)
        embedder = build_embedder(settings.embed.embedder, **settings.embed.embedder_options())
    report = {"run_dir": str(run_dir),
              "settings": {"model": asdict(model_settings), "attack": asdict(attack), "holdout": settings.holdout,
                           "holdout_count": settings.holdout_count,
                           "embed": asdict(settings.embed) if settings.embed else None},
              "training_images": {"A": int(len(data.images)), "B": int(sets["kept"].sum())}}
    conditions = conditioning.of(data)
    models = {}
    for name, rows in (("A", np.arange(len(data.images))), ("B", np.flatnonzero(sets["kept"]))):
        model, stats = trained_model(out_dir / f"verify-model-{name}.pt", name, data, rows, conditions, conditioning,
                                     [sets["rows"][i] for i in rows], model_settings, reporter)
        measured = {"training": stats, **membership(model, data, conditioning, sets, holdout, attack)}
        if model_settings.captions:
            measured.update(black_box_attack(model, data, conditioning, sets, prompts, controls, attack,
                                             run_dir / "embeddings", embedder))
        else:
            measured.update(white_box_attack(model, data, conditioning, sets, attack))
        reporter.info(f"verify {name}: AUC duplicated {measured['membership_auc_duplicated_vs_heldout']}, "
                      f"unique {measured['membership_auc_unique_vs_heldout']}; {measured['extracted_images']} images "
                      f"extracted from {measured['generations']} generations")
        measured["generations_file"] = save_generations(out_dir / f"verify-generations-{name}.npz", measured["_generations"])
        models[name] = measured
    figures = write_figures(out_dir, models)
    report.update({name: {k: v for k, v in value.items() if not k.startswith("_")} for name, value in models.items()})
    extracted_a, extracted_b = report["A"]["extracted_images"], report["B"]["extracted_images"]
    report["extracted_reduction"] = None if extracted_a == 0 else round(1 - extracted_b / extracted_a, 4)
    report["figures"] = figures
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_json(out_dir / "verify.json", report)
    return report


def save_generations(path: Path, generations: np.ndarray) -> str:
    """The generations as 8-bit images, so an attack can be scored again without sampling again."""
    with atomic_open(path, "wb") as handle:
        np.savez_compressed(handle, generations=(np.clip(generations, 0, 1) * 255).round().astype(np.uint8))
    return str(path)


def write_figures(out_dir: Path, models: dict) -> dict:
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
    measures = {"membership_auc_duplicated_vs_heldout": "loss: duplicated\nvs held-out",
                "membership_auc_unique_vs_heldout": "loss: unique\nvs held-out",
                "detector_auc_duplicated_vs_unique_prompts": "Wen detector: duplicated\nvs unique captions"}
    measures = {key: label for key, label in measures.items() if all(key in m for m in models.values())}
    for offset, (name, model) in zip((-width / 2, width / 2), models.items()):
        values = [np.nan if model[key] is None else model[key] for key in measures]
        right.bar(np.arange(len(measures)) + offset, values, width, label=f"model {name}")
    right.axhline(0.5, color="grey", linestyle=":")
    right.set_xticks(range(len(measures)), list(measures.values()), fontsize=8)
    right.set_ylim(0, 1)
    right.set_ylabel("AUC")
    right.legend()
    figure.tight_layout()
    paths = {"extraction_and_membership": str(out_dir / "verify-counts.png")}
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
    paths["closest_pairs"] = str(out_dir / "verify-pairs.png")
    with atomic_open(paths["closest_pairs"], "wb") as handle:
        figure.savefig(handle, format="png")
    plt.close(figure)
    return paths
