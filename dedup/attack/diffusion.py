"""A small diffusion model trained here from scratch with diffusers: DDPM training, DDIM sampling.

Unconditional, class-conditional (UNet2DModel) or caption-conditioned (UNet2DConditionModel with a small
caption encoder trained jointly, caption dropout so classifier-free guidance and the Wen et al. detector
work), at low resolution (16 or 32 px) and a few million parameters, trainable on 2 CPU cores. Training
draws samples uniformly from the training set, so an image present 200 times is seen 200 times as often:
the mechanism behind memorization.

A condition array goes with the images everywhere: None (unconditional), class ids (n,), or caption token
ids (n, length) from `text.CaptionVocabulary`.
"""

from __future__ import annotations

import time
import typing
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from dedup.attack.text import PAD, CaptionEncoder
from dedup.errors import InputError
from dedup.settings import ModelSettings


def build_unet(settings: ModelSettings):
    from diffusers import UNet2DConditionModel, UNet2DModel

    depth = len(settings.channels)
    if settings.captions:  # cross-attention on the captions at every level but the first (full resolution)
        return UNet2DConditionModel(
            sample_size=settings.resolution,
            in_channels=3,
            out_channels=3,
            layers_per_block=settings.layers_per_block,
            block_out_channels=tuple(settings.channels),
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (depth - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (depth - 1) + ("UpBlock2D",),
            cross_attention_dim=settings.text_width,
            attention_head_dim=8,
            norm_num_groups=8,
        )
    down = ["DownBlock2D"] * depth
    up = ["UpBlock2D"] * depth
    down[-2], up[1] = "AttnDownBlock2D", "AttnUpBlock2D"  # one attention level, at the lower resolution
    return UNet2DModel(
        sample_size=settings.resolution,
        in_channels=3,
        out_channels=3,
        layers_per_block=settings.layers_per_block,
        block_out_channels=tuple(settings.channels),
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        num_class_embeds=settings.classes or None,
        norm_num_groups=8,
    )


class Denoiser(torch.nn.Module):
    """Predicts the noise in x_t given t and the condition (None, class ids or caption tokens)."""

    def __init__(self, settings: ModelSettings, vocabulary_length: int = 0, caption_length: int = 0):
        super().__init__()
        self.settings = settings
        self.unet = build_unet(settings)
        self.captions = (
            CaptionEncoder(vocabulary_length, caption_length, settings.text_width, settings.text_layers)
            if settings.captions
            else None
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if self.captions is not None:
            assert condition is not None, "a caption-conditioned model needs caption tokens"
            return self.unet(
                x, t, encoder_hidden_states=self.captions(condition), encoder_attention_mask=(condition != PAD).float()
            ).sample
        return self.unet(x, t, class_labels=condition if self.settings.classes else None).sample


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def pick_device(requested: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if requested == "auto" else requested)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _condition(conditions: np.ndarray | None, rows, device: torch.device) -> torch.Tensor | None:
    return None if conditions is None else torch.from_numpy(np.asarray(conditions[rows])).long().to(device)


def _repeat_row(row: np.ndarray, count: int, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.repeat(row[None], count, 0)).long().to(device)


def _ema_with_warmup(decay: float):
    """Exponential moving average whose decay grows to `decay` over the first steps (as diffusers' EMAModel
    does), so a short run's average is not dominated by the untrained first weights."""

    def average(averaged: torch.Tensor, current: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
        step_decay = min(decay, (1 + float(updates)) / (10 + float(updates)))
        return step_decay * averaged + (1 - step_decay) * current

    return average


class CheckpointError(InputError):
    """A training checkpoint that cannot be read."""


class Checkpoint:
    """Where a training saves its whole state every `every` steps, tagged with `identity` (the settings and
    training data it belongs to): a checkpoint of another training is never continued."""

    def __init__(self, path: Path, identity: str, every: int = 250):
        self.path, self.identity, self.every = Path(path), identity, max(1, int(every))

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # written atomically: an unreadable one was damaged after it was written
            raise CheckpointError(
                f"training checkpoint {self.path} cannot be read ({error}); delete it to train that model from the start"
            ) from error
        return saved["state"] if saved.get("identity") == self.identity else None

    def save(self, state: dict) -> None:
        from dedup.io.atomic import atomic_open

        with atomic_open(self.path, "wb") as handle:
            torch.save({"identity": self.identity, "state": state}, handle)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def train(
    images: np.ndarray,
    conditions: np.ndarray | None,
    settings: ModelSettings,
    log=None,
    vocabulary_length: int = 0,
    empty_caption: np.ndarray | None = None,
    checkpoint: Checkpoint | None = None,
) -> tuple[Denoiser, dict]:
    """Train on images (n, 3, H, W) in [-1, 1]; returns the model and training stats.

    With captions, `conditions` are token ids, `vocabulary_length` the encoder's vocabulary and
    `empty_caption` (length,) the token row that caption dropout substitutes. With a `checkpoint`, the whole
    training state (weights, optimizer, average, both random generators, losses) is saved every
    `checkpoint.every` steps and a training found there is continued: the same model as one uninterrupted run."""
    from diffusers import DDPMScheduler

    if settings.captions and (conditions is None or conditions.ndim != 2 or empty_caption is None):
        raise ValueError("a caption-conditioned model needs caption tokens and the empty caption")
    torch.manual_seed(settings.seed)
    generator = np.random.default_rng(settings.seed)
    device = pick_device(settings.device)
    length = conditions.shape[1] if conditions is not None and settings.captions else 0
    model = Denoiser(settings, vocabulary_length, length).to(device)
    scheduler = DDPMScheduler(num_train_timesteps=settings.timesteps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    data = torch.from_numpy(images).to(device)
    empty = torch.from_numpy(empty_caption).long().to(device) if settings.captions else None
    if settings.conditioning == "none":
        conditions = None
    averaged = (
        torch.optim.swa_utils.AveragedModel(model, avg_fn=_ema_with_warmup(settings.ema)) if settings.ema else None
    )
    started, losses, first_step, earlier_seconds = time.perf_counter(), [], 0, 0.0
    resumed = checkpoint.load() if checkpoint else None
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        if averaged is not None:
            averaged.load_state_dict(resumed["averaged"])
        generator.bit_generator.state = resumed["numpy_generator"]
        torch.set_rng_state(resumed["torch_generator"])
        losses, first_step, earlier_seconds = list(resumed["losses"]), int(resumed["step"]), float(resumed["seconds"])
        if log:
            log(f"continuing from step {first_step} ({checkpoint.path if checkpoint else ''})")
    model.train()
    for step in range(first_step, settings.train_steps):
        rows = generator.integers(0, len(data), settings.batch_size)
        clean = data[torch.from_numpy(rows).to(device)]
        condition = _condition(conditions, rows, device)
        if condition is not None and empty is not None:
            condition[torch.from_numpy(generator.random(len(rows)) < settings.caption_dropout).to(device)] = empty
        noise = torch.randn_like(clean)
        t = torch.randint(0, settings.timesteps, (len(clean),), device=device)
        loss = torch.nn.functional.mse_loss(model(scheduler.add_noise(clean, noise, t), t, condition), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if averaged is not None:
            averaged.update_parameters(model)
        losses.append(loss.item())
        if log and (step + 1) % max(1, settings.train_steps // 10) == 0:
            log(f"step {step + 1}/{settings.train_steps}: loss {np.mean(losses[-50:]):.4f}")
        if checkpoint and (step + 1) % checkpoint.every == 0 and step + 1 < settings.train_steps:
            checkpoint.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "averaged": averaged.state_dict() if averaged is not None else None,
                    "numpy_generator": generator.bit_generator.state,
                    "torch_generator": torch.get_rng_state(),
                    "losses": losses,
                    "step": step + 1,
                    "seconds": earlier_seconds + time.perf_counter() - started,
                }
            )
    model = typing.cast(Denoiser, averaged.module) if averaged is not None else model
    model.eval()
    return model, {
        "seconds": round(earlier_seconds + time.perf_counter() - started, 1),
        "final_loss": float(np.mean(losses[-50:])),
        "parameters": parameter_count(model),
        "settings": asdict(settings),
    }


def _ddim(settings: ModelSettings):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=settings.timesteps)
    scheduler.set_timesteps(settings.sample_steps)
    return scheduler


def _guided(model: Denoiser, x, t, condition, empty, scale: float):
    """Classifier-free guidance: eps(empty) + scale * (eps(caption) - eps(empty)), both in one batch.
    Also returns the text-conditional part eps(caption) - eps(empty) (the Wen et al. signal)."""
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([condition, empty]))
    conditional, unconditional = both.chunk(2)
    return unconditional + scale * (conditional - unconditional), conditional - unconditional


@torch.inference_mode()
def sample(
    model: Denoiser,
    count: int,
    conditions: np.ndarray | None = None,
    empty_caption: np.ndarray | None = None,
    seed: int = 1,
    batch: int = 256,
) -> np.ndarray:
    """DDIM samples as (count, H, W, 3) in [0, 1]; conditions (count, ...) when the model is conditional."""
    settings, device = model.settings, _device(model)
    scheduler = _ddim(settings)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, count, batch):
        size = min(batch, count - start)
        x = torch.randn((size, 3, settings.resolution, settings.resolution), generator=generator).to(device)
        condition = (
            _condition(conditions, slice(start, start + size), device) if settings.conditioning != "none" else None
        )
        empty = _repeat_row(empty_caption, size, device) if empty_caption is not None and settings.captions else None
        for t in scheduler.timesteps:
            timestep = torch.full((size,), int(t), device=device)
            if settings.captions:
                eps, _ = _guided(model, x, timestep, condition, empty, settings.guidance_scale)
            else:
                eps = model(x, timestep, condition)
            x = scheduler.step(eps, t, x).prev_sample
        out.append(((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, settings.resolution, settings.resolution, 3), np.float32)


@torch.inference_mode()
def text_guidance_magnitude(
    model: Denoiser,
    captions: np.ndarray,
    empty_caption: np.ndarray,
    repeats: int = 4,
    steps: int = 1,
    seed: int = 7,
    batch: int = 256,
) -> np.ndarray:
    """Wen et al. (ICLR 2024): per caption, the norm of eps(x_t, caption) - eps(x_t, empty) over the first
    `steps` guided DDIM steps, averaged over `repeats` starting noises. Memorized captions score high."""
    settings, device = model.settings, _device(model)
    scheduler = _ddim(settings)
    tokens = np.repeat(captions, repeats, axis=0)
    generator = torch.Generator().manual_seed(seed)
    scores = np.zeros(len(tokens))
    for start in range(0, len(tokens), batch):
        size = min(batch, len(tokens) - start)
        x = torch.randn((size, 3, settings.resolution, settings.resolution), generator=generator).to(device)
        condition = _condition(tokens, slice(start, start + size), device)
        empty = _repeat_row(empty_caption, size, device)
        for t in scheduler.timesteps[:steps]:
            timestep = torch.full((size,), int(t), device=device)
            eps, text_part = _guided(model, x, timestep, condition, empty, settings.guidance_scale)
            scores[start : start + size] += text_part.flatten(1).norm(dim=1).float().cpu().numpy() / steps
            x = scheduler.step(eps, t, x).prev_sample
    return scores.reshape(len(captions), repeats).mean(1)


@torch.inference_mode()
def denoising_losses(
    model: Denoiser,
    images: np.ndarray,
    conditions: np.ndarray | None,
    timesteps: tuple[int, ...] = (50, 100, 200, 400),
    seed: int = 123,
    batch: int = 256,
) -> np.ndarray:
    """Per-image denoising loss at fixed noise and timesteps (the paper's membership signal): lower = member."""
    from diffusers import DDPMScheduler

    device = _device(model)
    scheduler = DDPMScheduler(num_train_timesteps=model.settings.timesteps)
    generator = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(images).to(device)
    noises = [torch.randn(data.shape[1:], generator=generator).to(device) for _ in timesteps]
    conditional = model.settings.conditioning != "none"
    losses = np.zeros(len(data), dtype=np.float64)
    for start in range(0, len(data), batch):
        clean = data[start : start + batch]
        condition = _condition(conditions, slice(start, start + batch), device) if conditional else None
        for noise, step in zip(noises, timesteps):
            noise_batch = noise.expand_as(clean)
            t = torch.full((len(clean),), step, dtype=torch.long, device=device)
            predicted = model(scheduler.add_noise(clean, noise_batch, t), t, condition)
            losses[start : start + batch] += ((predicted - noise_batch) ** 2).mean(dim=(1, 2, 3)).float().cpu().numpy()
    return losses / len(timesteps)


def auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """Probability that a member scores lower (lower loss) than a non-member; ties count half (Mann-Whitney)."""
    members = np.asarray(member_scores)[:, None]
    others = np.asarray(nonmember_scores)[None, :]
    return float(((members < others).sum() + 0.5 * (members == others).sum()) / (members.size * others.size))
