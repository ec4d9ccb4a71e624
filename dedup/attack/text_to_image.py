"""The black-box attack on any diffusers text-to-image pipeline saved in a local folder (Stable Diffusion and
the like), for users with a GPU: the paper's attack on the model a team trained on the data.

Prompts are the captions of the largest duplicate groups of a dedup run (the paper's selection rule),
optionally narrowed first by the Wen et al. detector; each prompt gets N generations; a clique of at least k
near-identical generations flags it; flagged generations are confirmed against the training set through
the run's embedding store. Nothing is fetched from a model hub.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from dedup.attack.confirm import images_from_shards, nearest_training_images
from dedup.attack.extraction import generate_and_filter
from dedup.attack.prompts import Prompt, largest_group_prompts
from dedup.errors import SettingsError
from dedup.io.atomic import atomic_open, write_json
from dedup.io.runfolder import RunFolder, load_manifest
from dedup.progress import SILENT, Reporter
from dedup.settings import EmbedSettings, ExtractSettings


def load_pipeline(path: str | Path, device: str = "auto"):
    """A diffusers text-to-image pipeline from a local folder (as written by `save_pretrained`)."""
    import torch
    from diffusers import DiffusionPipeline

    folder = Path(path)
    if not (folder / "model_index.json").is_file():
        raise SettingsError(
            f"{folder} is not a diffusers pipeline folder (no model_index.json); nothing is downloaded from a hub: "
            "fetch the pipeline where you can (e.g. `huggingface-cli download stabilityai/stable-diffusion-2-1-base "
            "--local-dir sd21`) and give that folder"
        )
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = DiffusionPipeline.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _size(pipe, settings: ExtractSettings) -> int:
    if settings.size:
        return settings.size
    return int(pipe.unet.config.sample_size * getattr(pipe, "vae_scale_factor", 8))


def generate(pipe, captions: list[str], settings: ExtractSettings) -> dict[str, np.ndarray]:
    """`generations_per_prompt` images per caption, (n, H, W, 3) in [0, 1], keyed by the caption's position."""
    import torch

    size = _size(pipe, settings)
    out = {}
    for number, caption in enumerate(captions):
        generator = torch.Generator(pipe.device).manual_seed(settings.seed + number)
        images, remaining = [], settings.generations_per_prompt
        while remaining:
            count = min(remaining, settings.batch_size)
            result = pipe(
                caption,
                num_images_per_prompt=count,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance_scale,
                height=size,
                width=size,
                output_type="np",
                generator=generator,
            )
            images.append(np.asarray(result.images, np.float32))
            remaining -= count
        out[str(number)] = np.concatenate(images)
    return out


def detector_scores(pipe, captions: list[str], settings: ExtractSettings) -> np.ndarray | None:
    """Wen et al.: the norm of the text-conditional noise prediction at the first step, per caption, mean over
    `detector_repeats` starting latents. None for pipelines whose UNet takes more than the text states
    (no `encode_prompt` returning (text, empty) embeddings)."""
    import torch

    if not (hasattr(pipe, "encode_prompt") and hasattr(pipe, "unet")):
        return None
    size = _size(pipe, settings) // getattr(pipe, "vae_scale_factor", 8)
    pipe.scheduler.set_timesteps(settings.steps)
    first = pipe.scheduler.timesteps[0]
    generator = torch.Generator(pipe.device).manual_seed(settings.seed)
    scores = []
    with torch.inference_mode():
        for caption in captions:
            encoded = pipe.encode_prompt(caption, pipe.device, settings.detector_repeats, True)
            if len(encoded) != 2:  # e.g. SDXL's pooled embeddings: its UNet needs more than the text states
                return None
            text, empty = encoded
            latents = (
                torch.randn(
                    (settings.detector_repeats, pipe.unet.config.in_channels, size, size),
                    generator=generator,
                    device=pipe.device,
                    dtype=text.dtype,
                )
                * pipe.scheduler.init_noise_sigma
            )
            latents = pipe.scheduler.scale_model_input(latents, first)
            noise = pipe.unet(
                torch.cat([latents, latents]), first, encoder_hidden_states=torch.cat([empty, text])
            ).sample
            unconditional, conditional = noise.chunk(2)
            scores.append(float((conditional - unconditional).float().flatten(1).norm(dim=1).mean()))
    return np.array(scores)


def extract(
    run_dir: str | Path,
    pipeline_path: str | Path,
    settings: ExtractSettings,
    embed: EmbedSettings,
    reporter: Reporter = SILENT,
    pipe=None,
) -> dict:
    """Attack the pipeline with the captions of RUN_DIR's largest duplicate groups; write extract.json."""
    from dedup.embedders import embedder_from

    run_dir = Path(run_dir)
    started = time.perf_counter()
    prompts: list[Prompt] = largest_group_prompts(run_dir, settings.prompts)
    if not prompts:
        raise SettingsError(f"{run_dir}/groups.parquet holds no duplicate group with a caption to attack with")
    embedder = embedder_from(embed)  # fails now on missing weights
    pipe = pipe or load_pipeline(pipeline_path, settings.device)
    captions = [p.caption for p in prompts]
    scores = detector_scores(pipe, captions, settings)
    if settings.prefilter and scores is None:
        reporter.warn(f"extract: the Wen et al. detector does not apply to {type(pipe).__name__}; all captions kept")
    if settings.prefilter and scores is not None:
        keep = sorted(np.argsort(-scores)[: settings.prefilter])
        reporter.info(f"extract: the detector keeps {len(keep)} of {len(prompts)} captions")
        prompts, captions, scores = [prompts[i] for i in keep], [captions[i] for i in keep], scores[keep]
    reporter.info(f"extract: {settings.generations_per_prompt} generations for each of {len(captions)} captions")
    generations = generate(pipe, captions, settings)
    generation_seconds = time.perf_counter() - started
    store = RunFolder(run_dir).embeddings
    result = generate_and_filter(
        generations,
        lambda images: nearest_training_images(
            images, store, embedder, settings.grid, settings.candidates, images_from_shards
        ),
        settings.delta,
        settings.min_clique,
        settings.grid,
    )
    extracted_groups = groups_of(run_dir, result.extracted_places)
    report = {
        "run_dir": str(run_dir),
        "pipeline": str(pipeline_path),
        "settings": asdict(settings),
        "embed": asdict(embed),
        "prompts": len(prompts),
        "flagged_prompts": len(result.flagged),
        # as verify counts: an image is a duplicate group (the image and its copies); the samples matched
        "extracted_images": len(extracted_groups),
        "extracted_groups": len(extracted_groups),
        "extracted_training_samples": len(result.extracted_places),
        "per_prompt": [
            {
                "caption": p.caption,
                "copies": p.group_size,
                "source_key": p.key,
                "largest_clique": len(result.flagged.get(str(i), [])),
                "extracted": [
                    {"key": m.key, "shard": m.shard, "sample_index": m.sample_index, "tiled_l2": round(m.tiled_l2, 4)}
                    for m in result.extracted[str(i)]
                ],
                "nearest_tiled_l2": round(min(m.tiled_l2 for m in result.nearest[str(i)]), 4),
                "detector_score": None if scores is None else round(float(scores[i]), 4),
            }
            for i, p in enumerate(prompts)
        ],
        "seconds": {"generation": round(generation_seconds, 1), "total": round(time.perf_counter() - started, 1)},
    }
    report["figure"] = write_extracted_grid(RunFolder(run_dir).extract_figure, generations, result)
    write_json(RunFolder(run_dir).extract_report, report)
    reporter.info(
        f"extract: {report['flagged_prompts']} of {len(prompts)} captions flagged, "
        f"{report['extracted_images']} training images extracted ({report['extracted_training_samples']} samples "
        "with their copies)"
    )
    return report


def groups_of(run_dir: Path, places: list[tuple[str, int]]) -> set[int | tuple[str, int]]:
    """The duplicate groups (of the run's manifest) the extracted training samples belong to; a sample in no
    group is its own."""
    manifest = load_manifest(run_dir, ["shard", "sample_index", "group_id", "group_size"])
    group_of = {
        (shard, index): group
        for shard, index, group, size in zip(
            manifest["shard"].to_pylist(),
            manifest["sample_index"].to_pylist(),
            manifest["group_id"].to_pylist(),
            manifest["group_size"].to_pylist(),
        )
        if group is not None and (size or 1) > 1
    }
    return {group_of.get(place, place) for place in places}


def write_extracted_grid(path: Path, generations: dict[str, np.ndarray], result, columns: int = 8) -> str | None:
    """Extracted generations (top) beside the training image each copies (bottom)."""
    pairs = [(generations[p][m.generation], m) for p, found in result.extracted.items() for m in found[:1]][:columns]
    if not pairs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    side = pairs[0][0].shape[0]
    training = images_from_shards([(m.shard, m.sample_index) for _, m in pairs], side)
    figure, axes = plt.subplots(2, len(pairs), figsize=(1.6 * len(pairs), 3.4), dpi=100, squeeze=False)
    for column, ((generated, match), original) in enumerate(zip(pairs, training)):
        axes[0, column].imshow(generated)
        axes[1, column].imshow(original)
        axes[0, column].set_title(f"l2 {match.tiled_l2:.2f}", fontsize=7)
        for axis in axes[:, column]:
            axis.axis("off")
    figure.suptitle("extracted: generation (top), training image (bottom)")
    figure.tight_layout()
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png")
    plt.close(figure)
    return str(path)
