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
import subprocess
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from dedup.attack.arms import (
    arm_captions,
    arm_description,
    chosen_arms,
    copies_by_edit,
    edit_of_group,
    extracted_by_edit,
    kept_per_duplicated_image,
    planted_truth,
    training_arms,
)
from dedup.attack.attacks import black_box_attack, membership, white_box_attack
from dedup.attack.diffusion import ModelSettings
from dedup.attack.figures import save_generations, write_dose_figure, write_figures
from dedup.attack.models import load_measured, model_identity, save_measured, trained_model
from dedup.attack.presets import (
    VerifySettings,
    dedup_config,
    load_preset,
    planted_counts,
    verify_settings,
    without_run,
)
from dedup.attack.summary import extracted_reduction, paired_differences, public, scalars, seed_summary
from dedup.attack.training_data import Conditioning, load_holdout, load_images, training_sets
from dedup.errors import InputError, SettingsError
from dedup.io.atomic import write_json
from dedup.io.runfolder import RunFolder, load_manifest
from dedup.progress import SILENT, Reporter


def verify(
    run_dir: str | Path,
    settings: VerifySettings,
    out_dir: str | Path | None = None,
    reporter: Reporter = SILENT,
    only: list[str] | None = None,
    preset: dict | None = None,
    preset_name: str | None = None,
) -> dict:
    """Train A (original) and B (deduplicated) and attack both; write verify.json and figures. `only` trains
    and measures those arms alone now (the report says it is incomplete; a later run without it reuses what
    they measured). `preset` is recorded in verify.json as it was resolved."""
    from dedup.attack.prompts import largest_group_prompts, unique_image_prompts
    from dedup.embedders import embedder_from

    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir
    if not settings.holdout:
        raise SettingsError("verify needs held-out images (holdout shards) to measure membership against")
    model_settings, attack = settings.model, settings.attack
    if model_settings.captions and settings.embed is None:
        raise SettingsError(
            "a caption-conditioned verify confirms generations through the run's embedding store: "
            "give the run's embed settings (the preset's [dedup] config)"
        )
    started = time.perf_counter()
    truth = planted_truth(run_dir)
    sets = training_sets(load_manifest(run_dir), truth["groups"] if truth else None)
    data = load_images(sets["rows"], model_settings.resolution)
    holdout = load_holdout(settings.holdout, settings.holdout_count, model_settings.resolution)
    conditioning = Conditioning(model_settings, data.captions)
    if model_settings.captions and not any(data.captions):
        raise InputError(
            f"the preset trains a caption-conditioned model, but none of the {len(data.captions)} training "
            "samples has a caption (KEY.txt, or caption in KEY.json); use a preset without captions = true"
        )
    if model_settings.captions:
        assert settings.embed is not None  # refused above
        prompts = largest_group_prompts(run_dir, attack.prompts)
        controls = unique_image_prompts(run_dir, attack.control_prompts, attack.seed)
        embedder = embedder_from(settings.embed)
    every_arm = training_arms(run_dir, sets, settings.arms)
    arms = {name: every_arm[name] for name in chosen_arms(every_arm, only)}
    seeds = settings.training_seeds()
    report: dict[str, Any] = {
        "run_dir": str(run_dir),
        "code": code_version(),
        "preset_name": preset_name,
        "preset": preset,
        "settings": {
            "model": asdict(model_settings),
            "attack": asdict(attack),
            "holdout": settings.holdout,
            "holdout_count": settings.holdout_count,
            "embed": asdict(settings.embed) if settings.embed else None,
            "arms": settings.arms,
            "seeds": seeds,
        },
        "arms_measured": list(arms),
        "training_images": {name: int(rows.size) for name, rows in (arms or every_arm).items()},
        "arm_configs": {
            "A": "no deduplication",
            "B": settings.dedup_config or "the run's",
            **{name: arm_description(spec) for name, spec in settings.arms.items() if name in arms},
        },
    }
    conditions = conditioning.of(data)
    rewritten = {
        name: arm_captions(run_dir, name, sets, data.captions) if model_settings.captions else None for name in arms
    }
    report["captions_rewritten"] = {
        name: 0 if captions is None else sum(captions[i] != data.captions[i] for i in arms[name].tolist())
        for name, captions in rewritten.items()
    }
    arm_conditions = {
        name: conditions if captions is None else conditioning.tokens(captions) for name, captions in rewritten.items()
    }
    by_seed: dict[str, list[dict]] = {name: [] for name in arms}
    if truth:
        report["copies_by_edit"] = copies_by_edit(truth, sets, every_arm)
        report["kept_per_duplicated_image"] = kept_per_duplicated_image(sets, every_arm)
    if not arms:  # deduplicated only: what each arm keeps, no model
        report.update({"complete": False, "seconds": round(time.perf_counter() - started, 1)})
        write_json(RunFolder(out_dir).verify_report, report)
        return report

    folder = RunFolder(out_dir)

    def train_and_attack(name: str, tag: str, rows: np.ndarray, seeded: ModelSettings) -> dict:
        identity = model_identity(seeded, [sets["rows"][i] for i in rows], conditioning, arm_conditions[name], rows)
        measurement = json.dumps(
            {"model": identity, "attack": asdict(attack), "holdout": [settings.holdout, settings.holdout_count]},
            sort_keys=True,
        )
        kept = load_measured(folder, tag, measurement)
        if kept is not None:
            reporter.info(f"verify {tag}: reusing what was measured on it ({folder.verify_measured(tag)})")
            return kept
        model, stats = trained_model(
            folder, tag, identity, data, rows, arm_conditions[name], conditioning, seeded, reporter,
            settings.checkpoint_every,
        )  # fmt: skip
        measured = {"training": stats, **membership(model, data, conditioning, sets, holdout, attack)}
        if model_settings.captions:
            store = RunFolder(run_dir).embeddings
            measured.update(
                black_box_attack(model, data, conditioning, sets, prompts, controls, attack, store, embedder)
            )
        else:
            measured.update(white_box_attack(model, data, conditioning, sets, attack, unseen=holdout))
        reporter.info(
            f"verify {tag}: AUC duplicated {measured['membership_auc_duplicated_vs_heldout']}, "
            f"unique {measured['membership_auc_unique_vs_heldout']}; {measured['extracted_images']} images "
            f"extracted from {measured['generations']} generations"
        )
        generations = measured.pop("_generations")
        measured["generations_file"] = save_generations(folder.verify_generations(tag), generations)
        save_measured(folder, tag, measurement, measured)
        return measured

    for seed in seeds:
        for name, rows in arms.items():
            tag = name if seed == seeds[0] else f"{name}-seed{seed}"
            by_seed[name].append(train_and_attack(name, tag, rows, replace(model_settings, seed=seed)))
            # a run of hours that is stopped keeps what it measured (its models are kept too: a rerun goes on)
            so_far = {arm: [scalars(value) for value in values] for arm, values in by_seed.items() if values}
            write_json(folder.verify_report, {**report, "complete": False, "by_seed": so_far})
    models = {name: measured[0] for name, measured in by_seed.items()}
    report.update({name: public(value) for name, value in models.items()})
    report["by_seed"] = {name: [scalars(value) for value in values] for name, values in by_seed.items()}
    images = np.unique(sets["group"])
    report["summary"] = {name: seed_summary(values, images) for name, values in by_seed.items()}
    report["differences"] = paired_differences(by_seed, images)
    if truth:
        edits = edit_of_group(truth, sets)
        if edits:
            for name, values in by_seed.items():
                report["summary"][name]["extracted_by_edit"] = extracted_by_edit(values, edits)
    report["extracted_reduction"] = extracted_reduction(report["summary"])
    report["figures"] = write_figures(out_dir, models, report["summary"])
    if report.get("kept_per_duplicated_image"):
        report["figures"]["dose_response"] = write_dose_figure(out_dir, report)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["complete"] = set(arms) == set(every_arm)
    write_json(folder.verify_report, report)
    return report


def code_version() -> dict:
    """The commit of the code that ran (and whether its tree had changes), where it runs from a git checkout."""
    root = Path(__file__).resolve().parents[2]

    def git(*arguments: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *arguments], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", "dedup", "configs") if commit else None
    return {"commit": commit, "changed": bool(status) if status is not None else None}


def checked_preset(preset_name: str, overrides: list[str] | None = None) -> tuple[dict, VerifySettings]:
    """The preset and its settings, checked before anything runs: a preset that names a GPU stops before
    planting and deduplicating on a machine without one."""
    import torch

    preset = load_preset(preset_name, overrides)
    settings = verify_settings(preset, preset_name)
    device = settings.model.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SettingsError(
            f"verify preset {preset_name!r} trains on {device!r}, and this machine has no CUDA device; run it where "
            "one is, or add --set model.device=cpu to run it here (hours where the preset was sized for a GPU)"
        )
    return preset, settings


def verify_run(
    preset_name: str,
    run_dir: str | Path,
    reporter: Reporter = SILENT,
    shards: list[str] | None = None,
    overrides: list[str] | None = None,
    only: list[str] | None = None,
) -> dict:
    """A verify preset end to end: plant its data (if it says so), `dedup run`, then train and attack A and B.
    `overrides` (`section.key=value`) change the preset's values, as `--set` does a run's; `only` names the
    arms to train and measure now (all by default)."""
    from dedup.runner import run
    from dedup.settings import load_settings
    from dedup.tools.planting import plant

    preset, settings_for_verify = checked_preset(preset_name, overrides)
    run_dir = Path(run_dir)
    chosen_arms(dict.fromkeys(["A", "B", *settings_for_verify.arms]), only)  # a name not there stops here
    recorded_name = preset_identity(preset_name)
    claim_run_folder(run_dir, recorded_name, preset)
    if not RunFolder(run_dir).summary.exists():
        if shards is None and "plant" in preset:
            options = dict(preset["plant"])
            data = RunFolder(run_dir).planted_data
            if not RunFolder(run_dir).planted.exists():
                sources, copies = planted_counts(options, preset_name)
                total = sum(copies) if isinstance(copies, list) else copies * sources
                reporter.info(f"verify: planting {total} copies of {sources} images into {data}")
                plant(
                    options.pop("source"),
                    data,
                    sources=sources,
                    copies=copies,
                    transforms=tuple(options.pop("transforms", ("exact", "reencode"))),
                    limit=options.pop("unique", None),
                    shard_size=options.pop("shard_size", None),
                    seed=options.pop("seed", 0),
                    paraphrase=options.pop("paraphrase", False),
                    one_edit_per_source=options.pop("one_edit_per_source", False),
                    others=options.pop("others", None),
                )
            shards = [str(data)]
        if not shards:
            raise SettingsError(f"preset {preset_name!r} plants no data; give the shards to verify")
        settings = load_settings(dedup_config(preset))
        settings.shards, settings.run_dir = list(shards), str(run_dir)
        run(settings, reporter=reporter)
    for name, spec in settings_for_verify.arms.items():
        folder = RunFolder(run_dir).arm(name)
        if not without_run(spec) and not folder.summary.exists():
            reporter.info(f"verify: arm {name}, dedup config {spec['config']!r} {' '.join(spec['set'])}".rstrip())
            arm = load_settings(spec["config"], spec["set"])
            arm.shards, arm.run_dir = input_shards(run_dir), str(folder.root)
            if share_embeddings(run_dir, folder, arm.embed):
                reporter.info(f"verify: arm {name} embeds as the run did: its embeddings are the run's (linked)")
            run(arm, reporter=reporter)
    return verify(run_dir, settings_for_verify, reporter=reporter, only=only, preset=preset, preset_name=recorded_name)


def preset_identity(preset_name: str) -> str:
    """The preset's name as verify.json records it: `flickr-near-full` for the name or for its file."""
    path = Path(preset_name)
    return path.stem.removeprefix("verify-") if path.suffix == ".toml" else preset_name


def claim_run_folder(run_dir: Path, name: str, preset: dict) -> None:
    """A run folder holds one preset's data: its name and what makes the data (its [plant], its dedup config,
    its held-out images) are recorded on the first run, and a run of another preset, or of other data, into it stops before
    anything is written."""
    record = RunFolder(run_dir).verify_preset
    data = {"name": name, "plant": preset.get("plant"), "dedup": dedup_config(preset), "holdout": preset.get("holdout")}
    data = json.loads(json.dumps(data))  # as the record reads back (tuples as lists)
    if record.exists():
        earlier = json.loads(record.read_text())
        if earlier != data:
            differs = [key for key in data if earlier.get(key) != data[key]]
            raise SettingsError(
                f"{run_dir} holds verify preset {earlier.get('name')!r} (its {', '.join(differs)} differ from "
                f"{name!r} as given): use another run folder, or run that preset there"
            )
        return
    if RunFolder(run_dir).verify_report.exists() or RunFolder(run_dir).summary.exists():
        return  # a folder made before presets were recorded: nothing to compare with
    write_json(record, data)


def share_embeddings(run_dir: Path, arm: RunFolder, embed_settings) -> bool:
    """An arm whose embedder is the run's starts from the run's embeddings, hard-linked (copied where links are
    not possible): its `dedup run` then searches, selects and writes, and embeds nothing again."""
    import os
    import shutil

    from dedup.io.store import EmbeddingStore
    from dedup.stages.embed import cached_embedder

    spec = EmbeddingStore(RunFolder(run_dir).embeddings).read_spec()
    made_as = (cached_embedder(embed_settings).spec(), embed_settings.decode_size)
    if arm.embeddings.exists() or spec is None or made_as != (spec.get("embedder"), spec.get("decode_size")):
        return False

    def link(source: str, target: str) -> None:
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)

    partial = arm.embeddings.with_name(arm.embeddings.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(RunFolder(run_dir).embeddings, partial, copy_function=link)
    partial.rename(arm.embeddings)
    return True


def input_shards(run_dir: Path) -> list[str]:
    """The shards the run at `run_dir` read (its embedding store's spec)."""
    from dedup.io.store import EmbeddingStore

    spec = EmbeddingStore(RunFolder(run_dir).embeddings).read_spec()
    if not spec or not spec.get("shards"):
        raise InputError(f"{run_dir} has no embedding store naming its shards; run `dedup run` there first")
    return list(spec["shards"])


def verify_after_run(settings, preset_name: str, reporter: Reporter = SILENT) -> dict:
    """`dedup run --verify PRESET`: the preset's model and attacks on the run just made, its generations
    confirmed through that run's store as it was embedded."""
    _, verifying = checked_preset(preset_name)
    verifying.embed = settings.embed
    return verify(settings.run_dir, verifying, reporter=reporter)
