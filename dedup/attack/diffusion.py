"""A small diffusion model trained here from scratch with diffusers: DDPM training, DDIM sampling.

Unconditional or class-conditional UNet2DModel at low resolution (16 or 32 px), a few hundred thousand to a
few million parameters, trainable on 2 CPU cores. Training draws samples uniformly from the training set,
so an image present 200 times is seen 200 times as often: the mechanism behind memorization.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass
class ModelSettings:
    resolution: int = 16
    channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    classes: int = 0  # 0: unconditional
    train_steps: int = 600
    batch_size: int = 64
    learning_rate: float = 1e-3
    timesteps: int = 1000
    sample_steps: int = 50
    seed: int = 0


def build_unet(settings: ModelSettings):
    from diffusers import UNet2DModel

    depth = len(settings.channels)
    down = ["DownBlock2D"] * depth
    up = ["UpBlock2D"] * depth
    down[-2], up[1] = "AttnDownBlock2D", "AttnUpBlock2D"  # one attention level, at the lower resolution
    return UNet2DModel(
        sample_size=settings.resolution, in_channels=3, out_channels=3,
        layers_per_block=settings.layers_per_block, block_out_channels=tuple(settings.channels),
        down_block_types=tuple(down), up_block_types=tuple(up),
        num_class_embeds=settings.classes or None, norm_num_groups=8,
    )


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def train(images: np.ndarray, labels: np.ndarray | None, settings: ModelSettings, log=None) -> tuple[torch.nn.Module, dict]:
    """Train on images (n, 3, H, W) in [-1, 1]; returns the model and training stats."""
    from diffusers import DDPMScheduler

    torch.manual_seed(settings.seed)
    generator = np.random.default_rng(settings.seed)
    model = build_unet(settings)
    scheduler = DDPMScheduler(num_train_timesteps=settings.timesteps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    data = torch.from_numpy(images)
    targets = torch.from_numpy(labels).long() if labels is not None and settings.classes else None
    started, losses = time.perf_counter(), []
    model.train()
    for step in range(settings.train_steps):
        rows = torch.from_numpy(generator.integers(0, len(data), settings.batch_size))
        clean = data[rows]
        noise = torch.randn_like(clean)
        t = torch.randint(0, settings.timesteps, (len(clean),))
        noisy = scheduler.add_noise(clean, noise, t)
        predicted = model(noisy, t, class_labels=targets[rows] if targets is not None else None).sample
        loss = torch.nn.functional.mse_loss(predicted, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if log and (step + 1) % max(1, settings.train_steps // 10) == 0:
            log(f"step {step + 1}/{settings.train_steps}: loss {np.mean(losses[-50:]):.4f}")
    model.eval()
    return model, {"seconds": round(time.perf_counter() - started, 1), "final_loss": float(np.mean(losses[-50:])),
                   "parameters": parameter_count(model), "settings": asdict(settings)}


@torch.inference_mode()
def sample(model, settings: ModelSettings, count: int, labels: np.ndarray | None = None, seed: int = 1, batch: int = 256) -> np.ndarray:
    """DDIM samples as (count, H, W, 3) in [0, 1]."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=settings.timesteps)
    scheduler.set_timesteps(settings.sample_steps)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, count, batch):
        size = min(batch, count - start)
        x = torch.randn((size, 3, settings.resolution, settings.resolution), generator=generator)
        classes = torch.from_numpy(labels[start:start + size]).long() if labels is not None and settings.classes else None
        for t in scheduler.timesteps:
            eps = model(x, t, class_labels=classes).sample
            x = scheduler.step(eps, t, x).prev_sample
        out.append(((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out) if out else np.zeros((0, settings.resolution, settings.resolution, 3), np.float32)


@torch.inference_mode()
def denoising_losses(model, images: np.ndarray, labels: np.ndarray | None, settings: ModelSettings,
                     timesteps: tuple[int, ...] = (50, 100, 200, 400), seed: int = 123, batch: int = 256) -> np.ndarray:
    """Per-image denoising loss at fixed noise and timesteps (the paper's membership signal): lower = member."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=settings.timesteps)
    generator = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(images)
    noises = [torch.randn(data.shape[1:], generator=generator) for _ in timesteps]
    losses = np.zeros(len(data), dtype=np.float64)
    for start in range(0, len(data), batch):
        clean = data[start:start + batch]
        classes = torch.from_numpy(labels[start:start + batch]).long() if labels is not None and settings.classes else None
        for noise, step in zip(noises, timesteps):
            noise_batch = noise.expand_as(clean)
            t = torch.full((len(clean),), step, dtype=torch.long)
            predicted = model(scheduler.add_noise(clean, noise_batch, t), t, class_labels=classes).sample
            losses[start:start + batch] += ((predicted - noise_batch) ** 2).mean(dim=(1, 2, 3)).numpy()
    return losses / len(timesteps)


def auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """Probability that a member scores lower (lower loss) than a non-member; ties count half (Mann-Whitney)."""
    members = np.asarray(member_scores)[:, None]
    others = np.asarray(nonmember_scores)[None, :]
    return float(((members < others).sum() + 0.5 * (members == others).sum()) / (members.size * others.size))
