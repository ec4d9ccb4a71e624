"""CLIP image (and optionally caption) embeddings through open_clip.

`pretrained` is either an open_clip tag (downloaded once into the Hugging Face cache) or a local
checkpoint file. When the weights cannot be had, loading stops at once with `ModelUnavailableError`,
which says how to point at a local file; it never falls back to random weights.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from dedup.embedders.base import Embedder
from dedup.errors import ModelUnavailableError, SettingsError

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"


class BatchNormalizer:
    """open_clip's preprocessing split in two: the PIL steps per image (resize, crop, RGB: in the decode
    threads, which release the GIL), then ToTensor + Normalize once per batch on the model's device.
    Per image, those two are a dozen small torch calls that hold the GIL and spawn intra-op threads: on a
    16-core GPU machine they kept the pipeline at 243 images/s while the model alone ran 4,130."""

    def __init__(self, image_steps, mean: Sequence[float], std: Sequence[float]):
        self.image_steps, self.mean, self.std = image_steps, tuple(mean), tuple(std)

    @classmethod
    def split(cls, preprocess) -> BatchNormalizer | None:
        """None when the transform does not end in ToTensor + Normalize (then it runs whole, per image)."""
        from torchvision import transforms

        steps = list(getattr(preprocess, "transforms", []))
        if (
            len(steps) < 2
            or not isinstance(steps[-2], transforms.ToTensor)
            or not isinstance(steps[-1], transforms.Normalize)
        ):
            return None
        normalize = steps[-1]
        return cls(transforms.Compose(steps[:-2]), normalize.mean, normalize.std)

    def prepare(self, image: Image.Image) -> np.ndarray:
        return np.asarray(self.image_steps(image), dtype=np.uint8)

    def batch(self, prepared: Sequence[np.ndarray], device: str, dtype):
        import torch

        pixels = torch.from_numpy(np.stack(prepared)).to(device).permute(0, 3, 1, 2).float().div_(255)
        mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
        return pixels.sub_(mean).div_(std).to(dtype).contiguous()


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_precision(device: str, requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    return "fp16" if device.startswith("cuda") else "fp32"


HUB_HOST = ("huggingface.co", 443)
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _cached_weights(cfg: dict) -> str | None:
    """The weights of a pretrained tag already in the Hugging Face cache, found without any network call."""
    from huggingface_hub import try_to_load_from_cache

    repo = (cfg.get("hf_hub") or "").strip("/")
    if not repo:
        return None
    parts = repo.split("/")
    repo_id, names = "/".join(parts[:2]), ([parts[2]] if len(parts) > 2 else list(WEIGHT_FILES))
    for name in names:
        found = try_to_load_from_cache(repo_id, name)
        if isinstance(found, str):
            return found
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def resolve_weights(model: str, pretrained: str) -> tuple[str, dict]:
    """A local weights file for an open_clip tag: from the cache, else downloaded; never a silent fallback.

    Checking the cache and the network first makes an offline machine fail in seconds, instead of after
    the hub client's minute of retries.
    """
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    cached = _cached_weights(cfg)
    if cached:
        return cached, cfg
    if not _hub_reachable():
        raise ModelUnavailableError(
            _missing_weights_message(
                model,
                pretrained,
                ConnectionError("the model hub cannot be reached and the weights are not in the cache"),
            )
        )
    try:
        return open_clip.download_pretrained(cfg), cfg
    except Exception as error:  # noqa: BLE001 - any download failure means no weights
        raise ModelUnavailableError(_missing_weights_message(model, pretrained, error)) from error


def _missing_weights_message(model: str, pretrained: str, error: Exception) -> str:
    return (
        f"CLIP weights {model} / {pretrained} could not be loaded ({type(error).__name__}: {error}). "
        "This machine may be offline with nothing cached. Give a local open_clip checkpoint with "
        "--pretrained /path/to/open_clip_model.safetensors (or .bin / .pt), or choose an embedder that "
        "needs no weights: --config offline (the pixels embedder, with thresholds set for it), or hashes only "
        "with --threshold off."
    )


class ClipEmbedder(Embedder):
    name = "clip"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        pretrained: str | None = DEFAULT_PRETRAINED,
        device: str = "auto",
        precision: str = "auto",
        model_config: str | None = None,
        text: bool = False,
        runtime: str = "torch",
    ):
        import open_clip
        import torch

        if model_config:
            open_clip.add_model_config(model_config)
        if model not in open_clip.list_models():
            raise SettingsError(
                f'unknown open_clip architecture {model!r}; `python -c "import open_clip; print(open_clip.list_models())"` lists them'
            )
        pretrained = pretrained or None
        local = pretrained is not None and (os.sep in pretrained or Path(pretrained).exists())
        if pretrained is not None and local and not Path(pretrained).is_file():
            raise ModelUnavailableError(
                f"checkpoint file {pretrained!r} does not exist; give the path to a saved open_clip state dict"
            )
        if pretrained is not None and not local and pretrained not in open_clip.list_pretrained_tags_by_model(model):
            known = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
            raise SettingsError(
                f"{model!r} has no pretrained tag {pretrained!r} (known: {known}); or give a checkpoint path"
            )
        if pretrained is None:
            raise SettingsError(
                "the clip embedder needs weights: give --pretrained TAG or a checkpoint path; "
                "random weights are never used silently"
            )
        self.device = pick_device(device)
        self.precision = pick_precision(self.device, precision)
        weights, cfg = (pretrained, {}) if local else resolve_weights(model, pretrained)
        try:
            created = open_clip.create_model_and_transforms(
                model,
                pretrained=weights,
                device=self.device,
                precision=self.precision,
                force_quick_gelu=bool(cfg.get("quick_gelu", False)),
                image_mean=cfg.get("mean"),
                image_std=cfg.get("std"),
                image_interpolation=cfg.get("interpolation"),
                image_resize_mode=cfg.get("resize_mode"),
            )
        except (RuntimeError, OSError, ValueError, KeyError) as error:
            raise ModelUnavailableError(_missing_weights_message(model, pretrained, error)) from error
        self.model, _, self.preprocess = created
        self.batch_normalizer = BatchNormalizer.split(self.preprocess)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model) if text else None
        self.model_name, self.pretrained, self.text = model, pretrained, text
        with torch.inference_mode():
            probe = self._batch([self.prepare(Image.new("RGB", (8, 8)))])
            self.dim = int(self.model.encode_image(probe).shape[-1])
        self.runtime = runtime
        self.onnx_tower = None
        if runtime != "torch":
            from dedup.embedders.onnx_tower import OnnxImageTower

            if self.device != "cpu" or self.precision != "fp32":
                raise SettingsError(
                    f"runtime {runtime} is for CPU fp32 models; use runtime torch on {self.device}/{self.precision}"
                )
            self.onnx_tower = OnnxImageTower.for_model(
                self.model.visual, probe, model, weights, quantize=runtime == "onnx-int8"
            )

    def _dtype(self):
        import torch

        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision, torch.float32)

    def spec(self) -> dict:
        return {
            "embedder": self.name,
            "model": self.model_name,
            "pretrained": self.pretrained,
            "precision": self.precision,
            "runtime": self.runtime,
            "dim": self.dim,
            "text": self.text,
        }

    def prepare(self, image: Image.Image):
        if self.batch_normalizer is None:
            return self.preprocess(image)
        return self.batch_normalizer.prepare(image)

    def _batch(self, prepared: Sequence):
        import torch

        if self.batch_normalizer is None:
            return torch.stack(list(prepared)).to(self.device, dtype=self._dtype())
        return self.batch_normalizer.batch(prepared, self.device, self._dtype())

    def embed(self, prepared: Sequence) -> np.ndarray:
        import torch

        if not prepared:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = self._batch(prepared)
        if self.onnx_tower is not None:
            features = self.onnx_tower(batch.numpy())
            return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        with torch.inference_mode():
            encoded = torch.nn.functional.normalize(self.model.encode_image(batch).float(), dim=-1)
        return encoded.cpu().numpy().astype(np.float32)

    def embed_texts(self, captions: Sequence[str]) -> np.ndarray | None:
        import torch

        if self.tokenizer is None:
            return None
        if not captions:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokens = self.tokenizer(list(captions)).to(self.device)
        with torch.inference_mode():
            features = self.model.encode_text(tokens).float()
            features = torch.nn.functional.normalize(features, dim=-1)
        return features.cpu().numpy().astype(np.float32)
