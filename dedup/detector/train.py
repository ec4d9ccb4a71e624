"""Train the copy detector on Imagenette, as SSCD was trained: two strongly augmented views of each photo, InfoNCE
over the batch with a differential-entropy (KoLeo) regulariser, only the last blocks of the ImageNet trunk tuned.

    python -m dedup.detector.train ../shared/data/imagenette --out detector-run --minutes 110

Resumable: a run stops at --minutes (or on Ctrl-C) after writing checkpoint.pt; the same command continues it
from there, sample for sample (each training pair is a function of the seed and its position in the stream).
When the last step is done it writes copydetect-lite0.pt, the file dedup ships. Cost: docs/detector.md."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
import typer
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from dedup.detector.augment import augment
from dedup.detector.model import (
    CopyDetector,
    DetectorConfig,
    load_detector,
    load_imagenet_trunk,
    normalised_pixels,
    save_detector,
)
from dedup.errors import InputError

TEMPERATURE = 0.05  # SSCD's
ENTROPY_WEIGHT = 30.0  # SSCD's lambda


def read_photos(folder: Path, split: str | None) -> list[bytes]:
    """The JPEG bytes of every sample of the shards in `folder` (json `split` equal to `split` when given)."""
    shards = sorted(folder.glob("*.tar"))
    if not shards:
        raise InputError(f"no .tar shards in {folder}; give the Imagenette folder (../shared/data/imagenette)")
    photos: list[bytes] = []
    for shard in shards:
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.isfile():
                    key, _, ext = member.name.rpartition(".")
                    members.setdefault(key, {})[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
        for parts in members.values():
            if "jpg" in parts and (split is None or json.loads(parts.get("json", b"{}")).get("split") == split):
                photos.append(parts["jpg"])
    return photos


def to_tensor(image: Image.Image, config: DetectorConfig) -> torch.Tensor:
    return torch.from_numpy(normalised_pixels(image, config))


class PairStream(Dataset):
    """Position i of an endless stream -> two augmented views of one photo; epochs are seeded permutations."""

    def __init__(self, photos: list[bytes], config: DetectorConfig, seed: int):
        self.photos, self.config, self.seed = photos, config, seed
        self._epoch, self._order = -1, np.arange(0)

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, offset = divmod(position, len(self.photos))
        if epoch != self._epoch:
            self._epoch, self._order = epoch, np.random.default_rng((self.seed, epoch)).permutation(len(self.photos))
        rng = random.Random(f"{self.seed}:{position}")
        torch.manual_seed(rng.getrandbits(63))  # torchvision's colour jitter draws from torch's generator
        photo = self._decode(int(self._order[offset]))
        background = self._decode(rng.randrange(len(self.photos)))
        size = self.config.input_size
        return tuple(to_tensor(augment(photo, size, rng, background), self.config) for _ in range(2))  # type: ignore[return-value]

    def _decode(self, index: int) -> Image.Image:
        return Image.open(io.BytesIO(self.photos[index])).convert("RGB")


class StreamFrom(Sampler[int]):
    def __init__(self, start: int):
        self.start = start

    def __iter__(self) -> Iterator[int]:
        position = self.start
        while True:
            yield position
            position += 1


def info_nce(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Each view's positive is the other view of its photo; every other view in the batch is a negative."""
    views = torch.cat([first, second])
    similarity = views @ views.T / TEMPERATURE
    similarity.fill_diagonal_(float("-inf"))
    n = first.shape[0]
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(similarity, targets)


def koleo(descriptors: torch.Tensor) -> torch.Tensor:
    """Kozachenko-Leonenko differential entropy estimate, negated: spreads the photos' descriptors apart."""
    with torch.no_grad():
        similarity = descriptors @ descriptors.T
        similarity.fill_diagonal_(-2.0)
        nearest = similarity.argmax(dim=1)
    distances = (descriptors - descriptors[nearest]).norm(dim=1)
    return -torch.log(distances + 1e-8).mean()


def monitor(model: CopyDetector, photos: list[bytes], config: DetectorConfig) -> dict[str, float]:
    """Held-back Imagenette photos and one augmented copy each: how often the copy's nearest photo is its own."""
    rng = random.Random(12345)
    originals, copies = [], []
    for data in photos:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        originals.append(to_tensor(image.resize((config.input_size,) * 2), config))
        copies.append(to_tensor(augment(image, config.input_size, rng), config))
    model.eval()
    with torch.inference_mode():
        a, b = model(torch.stack(originals)), model(torch.stack(copies))
    model.train()
    freeze_early_blocks(model)
    similarity = b @ a.T
    positive = similarity.diag()
    similarity.fill_diagonal_(-2.0)
    hardest_negative = similarity.max(dim=1).values
    return {
        "top1": float((positive > hardest_negative).float().mean()),
        "positive_cosine": float(positive.mean()),
        "hardest_negative_cosine": float(hardest_negative.mean()),
    }


def freeze_early_blocks(model: CopyDetector) -> None:
    """Frozen parts run in eval mode: their batch-norm statistics stay ImageNet's."""
    trainable = {id(p) for p in model.trainable_parameters()}
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own and not any(id(p) in trainable for p in own):
            module.eval()
    for parameter in model.parameters():
        parameter.requires_grad = id(parameter) in trainable


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def main(
    data: Annotated[Path, typer.Argument(help="Folder of Imagenette shards (../shared/data/imagenette).")],
    out: Annotated[Path, typer.Option(help="Training folder: checkpoint.pt, log.jsonl, the final weights.")] = Path(
        "detector-run"
    ),
    steps: Annotated[int, typer.Option(help="Total optimiser steps of the whole training.")] = 3000,
    batch: Annotated[int, typer.Option(help="Photos a step (two views each).")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, cosine decay).")] = 5e-4,
    minutes: Annotated[float, typer.Option(help="Stop this run after so many minutes; rerun to resume.")] = 110.0,
    seed: Annotated[int, typer.Option(help="Seed of the photo order and of every augmentation.")] = 0,
    threads: Annotated[int, typer.Option(help="Torch threads.")] = 2,
    loader_workers: Annotated[int, typer.Option(help="Processes making augmented pairs.")] = 1,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 50,
    monitor_every: Annotated[int, typer.Option(help="Steps between monitor measurements.")] = 250,
    stop_after: Annotated[int | None, typer.Option(help="Stop this run after so many steps; rerun to resume.")] = None,
    init: Annotated[
        Path | None,
        typer.Option(
            help="A detector file (the shipped one, or one this command wrote) to start from instead of a random "
            "projection: training goes on from its weights with a schedule of its own (--steps, --lr)."
        ),
    ] = None,
) -> None:
    """Train (or resume training) the copy detector on Imagenette."""
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    config = DetectorConfig()
    torch.manual_seed(seed)  # the projection's initial weights
    photos = read_photos(data, "train")
    held_back = read_photos(data, "val")[:400]
    if init is None:
        model = CopyDetector(config)
        load_imagenet_trunk(model)
    else:
        model = load_detector(init)  # a checkpoint, where there is one, replaces its tensors below
        config = model.config
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=lr, weight_decay=1e-6)
    step = _resume(out / "checkpoint.pt", model, optimizer, seed)
    model.train()
    freeze_early_blocks(model)
    loader = DataLoader(
        PairStream(photos, config, seed),
        batch_size=batch,
        sampler=StreamFrom(step * batch),
        num_workers=loader_workers,
        persistent_workers=loader_workers > 0,
    )
    started, first_step = time.monotonic(), step
    log = (out / "log.jsonl").open("a")
    typer.echo(f"training from step {step} of {steps} on {len(photos)} Imagenette photos; writing {out}")
    for first, second in loader:
        if (
            step >= steps
            or time.monotonic() - started > minutes * 60
            or (stop_after is not None and step - first_step >= stop_after)
        ):
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, lr, warmup=100)
        a, b = model(first), model(second)
        contrastive, entropy = info_nce(a, b), koleo(a)
        loss = contrastive + ENTROPY_WEIGHT * entropy
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        record = {"step": step, "loss": loss.item(), "infonce": contrastive.item(), "koleo": entropy.item()}
        if held_back and (step % monitor_every == 0 or step == steps):
            record.update(monitor(model, held_back, config))
        record["seconds"] = round(time.monotonic() - started, 1)
        log.write(json.dumps(record) + "\n")
        log.flush()
        if step % checkpoint_every == 0 or step == steps:
            _checkpoint(out / "checkpoint.pt", model, optimizer, step, seed)
    _checkpoint(out / "checkpoint.pt", model, optimizer, step, seed)
    if step >= steps:
        trained_as: dict[str, object] = {"steps": steps, "batch": batch, "seed": seed, "lr": lr}
        if init is not None:
            trained_as["init"] = {"file": init.name, "sha256": hashlib.sha256(init.read_bytes()).hexdigest()}
        save_detector(model, out / "copydetect-lite0.pt", {"training": trained_as})
        typer.echo(f"done: {out / 'copydetect-lite0.pt'}")
    else:
        typer.echo(f"stopped at step {step} of {steps}; run the same command again to resume")


def _checkpoint(path: Path, model: CopyDetector, optimizer: torch.optim.Optimizer, step: int, seed: int) -> None:
    partial = path.with_suffix(".partial")
    torch.save(
        {"step": step, "seed": seed, "model": model.trained_state(), "optimizer": optimizer.state_dict()}, partial
    )
    os.replace(partial, path)


def _resume(path: Path, model: CopyDetector, optimizer: torch.optim.Optimizer, seed: int) -> int:
    if not path.exists():
        return 0
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved["seed"] != seed:
        raise InputError(f"{path} was trained with seed {saved['seed']}, not {seed}: give --seed {saved['seed']}")
    model.load_state_dict(saved["model"], strict=False)
    optimizer.load_state_dict(saved["optimizer"])
    return int(saved["step"])


if __name__ == "__main__":
    typer.run(main)
