"""The settings of `verify` (the diffusion model trained twice, and the attacks on it) and of `extract`."""

from __future__ import annotations

from dataclasses import dataclass

from dedup.settings.base import setting
from dedup.settings.run import EmbedSettings


@dataclass
class ModelSettings:
    resolution: int = setting(16, "Image side the model is trained at.")
    channels: tuple[int, ...] = setting((32, 64, 64), "UNet channels per level.")
    layers_per_block: int = setting(1, "UNet layers per level.")
    classes: int = setting(0, "> 0: class-conditional.")
    captions: bool = setting(False, "Caption-conditioned (takes precedence over classes).")
    caption_dropout: float = setting(0.1, "Share of training captions replaced by the empty caption.")
    guidance_scale: float = setting(3.0, "Classifier-free guidance when sampling with captions.")
    text_width: int = setting(64, "Width of the caption encoder.")
    text_layers: int = setting(2, "Layers of the caption encoder.")
    vocabulary_size: int = setting(2000, "Words the caption vocabulary keeps.")
    max_words: int = setting(16, "Words of a caption the model reads.")
    train_steps: int = setting(600, "Optimizer steps.")
    batch_size: int = setting(64, "Training batch.")
    learning_rate: float = setting(1e-3, "Adam learning rate.")
    ema: float = setting(0.0, "> 0: sample and measure with an exponential moving average of the weights (e.g. 0.999).")
    timesteps: int = setting(1000, "Diffusion timesteps in training.")
    sample_steps: int = setting(50, "DDIM steps when sampling.")
    seed: int = setting(0, "Seed of initialisation, batches and noise.")
    device: str = setting("auto", "auto (cuda when present, else cpu) | cpu | cuda")

    @property
    def conditioning(self) -> str:
        return "caption" if self.captions else "class" if self.classes else "none"


@dataclass
class AttackSettings:
    generations: int = setting(512, "White box: samples drawn from an unconditional or class-conditional model.")
    alpha: float = setting(
        0.5, "White box: extracted when the nearest training image is this much nearer than the rest."
    )
    neighbours: int = setting(50, "White box: training images the ratio compares with.")
    duplicated_min: int = setting(10, "A training image is 'duplicated' when its group holds at least this many.")
    unique_sample: int = setting(500, "Unique training images sampled for membership.")
    seed: int = setting(0, "Seed of sampling.")
    prompts: int = setting(20, "Black box: captions of the largest duplicate groups.")
    control_prompts: int = setting(20, "Black box: captions of images without duplicates (the detector's negatives).")
    generations_per_prompt: int = setting(16, "Black box: generations per caption.")
    delta: float = setting(0.15, "Tiled l2 within which two images count as the same.")
    min_clique: int = setting(5, "Near-identical generations that flag a caption.")
    grid: int = setting(4, "Tiles a side of the tiled l2.")
    candidates: int = setting(5, "Nearest training images (by the store's embeddings) checked per generation.")
    detector_repeats: int = setting(4, "Noise draws of the Wen et al. detector.")
    detector_steps: int = setting(1, "Denoising steps of the Wen et al. detector.")


@dataclass
class VerifySettings:
    holdout: list[str] = setting(help="Held-out shards membership is measured against.", factory=list)
    holdout_count: int = setting(500, "Held-out images used.")
    model: ModelSettings = setting(factory=ModelSettings)
    attack: AttackSettings = setting(factory=AttackSettings)
    embed: EmbedSettings | None = setting(None, "The run's embedder, to confirm generations through its store.")
    arms: dict[str, dict] = setting(
        help="More deduplicated models on the same data: name -> {config, set: [overrides]} (in a preset, "
        'B-exact = "exact" or B-cap3 = { config = "default", set = ["select.policy=cap:3"] }), each run into '
        "RUN_DIR/arms/NAME and trained like B, on the captions its run wrote.",
        factory=dict,
    )
    dedup_config: str | None = setting(None, "The dedup config model B's run used (for the report).")
    seeds: list[int] = setting(
        help="Training seeds: every model once per seed (empty: the model's seed).", factory=list
    )

    checkpoint_every: int = setting(
        250, "Training steps between checkpoints ([model] checkpoint_every): a killed verify continues from there."
    )

    def training_seeds(self) -> list[int]:
        return list(self.seeds) or [self.model.seed]


@dataclass
class ExtractSettings:
    prompts: int = setting(100, "Attack with the captions of this many of the largest duplicate groups.")
    prefilter: int = setting(0, "Keep only this many captions, those the Wen et al. detector scores highest (0: all).")
    generations_per_prompt: int = setting(
        500, "Generations per caption (the paper's 500: a clique of 10 is 2 % of them; fewer make the filter stricter)."
    )
    steps: int = setting(50, "Denoising steps per generation.")
    guidance_scale: float = setting(7.5, "Classifier-free guidance.")
    size: int | None = setting(None, "Image side (default: the pipeline's).")
    delta: float = setting(0.15, "Tiled l2 within which two images are the same.")
    min_clique: int = setting(10, "Near-identical generations that flag a caption as memorized.")
    grid: int = setting(4, "Tiles a side of the tiled l2.")
    candidates: int = setting(5, "Nearest training images checked per generation.")
    batch_size: int = setting(8, "Generations per pipeline call.")
    device: str = setting("auto", "auto | cpu | cuda")
    seed: int = setting(0, "Seed of the generations.")
    detector_repeats: int = setting(4, "Noise draws of the Wen et al. detector.")
