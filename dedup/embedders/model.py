"""Any image encoder exported to ONNX or TorchScript, for example SSCD, Meta's copy-detection model: its published
TorchScript files take NCHW float images normalised with ImageNet's mean and std; ONNX exports that take uint8
NHWC images and normalise inside are recognised from the graph's input and fed raw pixels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from dedup.embedders.base import Embedder, l2_normalize
from dedup.errors import ModelUnavailableError, SettingsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ExportedModelEmbedder(Embedder):
    name = "model"

    def __init__(
        self,
        path: str,
        input_size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        resize_mode: str = "resize",
    ):
        if not path:
            raise SettingsError("the model embedder needs --model-path pointing at an .onnx or TorchScript (.pt) file")
        if not Path(path).is_file():
            raise ModelUnavailableError(
                f"model file {path!r} does not exist; export the encoder to ONNX or TorchScript and give its path"
            )
        if resize_mode not in ("resize", "center_crop"):
            raise SettingsError(f"resize_mode must be 'resize' or 'center_crop', got {resize_mode!r}")
        self.path, self.input_size, self.resize_mode = path, int(input_size), resize_mode
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
        self.format = "onnx" if path.endswith(".onnx") else "torchscript"
        self.layout = "nchw-float"
        self._run = self._load_onnx() if self.format == "onnx" else self._load_torchscript()
        try:
            probe = self._run(np.stack([self.prepare(Image.new("RGB", (self.input_size, self.input_size)))]))
        except Exception as error:  # the runtime's own error types: the model does not take this input
            raise ModelUnavailableError(
                f"model {path!r} fails on a {self.input_size}x{self.input_size} image ({type(error).__name__}: "
                f"{error}); check --input-size and that the file is an image encoder"
            ) from error
        if probe.ndim != 2 or probe.shape[1] < 1:
            raise ModelUnavailableError(
                f"model {path!r} returns shape {tuple(probe.shape)} for one image; an image encoder must return "
                "(batch, dim): export the encoder's embedding output, not a feature map or logits of another shape"
            )
        self.dim = int(probe.shape[1])

    def _load_onnx(self):
        try:
            import onnxruntime
        except ImportError as error:
            raise SettingsError(
                "ONNX models need onnxruntime, a dependency of dedup that is missing: pip install onnxruntime"
            ) from error
        try:
            session = onnxruntime.InferenceSession(self.path, providers=onnxruntime.get_available_providers())
        except Exception as error:  # onnxruntime raises its own exception types for a bad file
            raise ModelUnavailableError(
                f"{self.path!r} is not a loadable ONNX model ({error}); export the encoder again and give its path"
            ) from error
        graph_input = session.get_inputs()[0]
        if graph_input.type == "tensor(uint8)" and len(graph_input.shape) == 4 and graph_input.shape[-1] == 3:
            self.layout = "nhwc-uint8"  # the graph normalises inside
        return lambda batch: np.asarray(session.run(None, {graph_input.name: batch})[0])

    def _load_torchscript(self):
        import torch

        try:
            module = torch.jit.load(self.path, map_location="cpu").eval()
        except (RuntimeError, ValueError) as error:
            raise ModelUnavailableError(
                f"{self.path!r} is not a TorchScript file ({error}); give an .onnx or torch.jit.save'd model"
            ) from error

        def run(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(torch.from_numpy(batch)).float().numpy()

        return run

    def spec(self) -> dict:
        return {
            "embedder": self.name,
            "path": str(Path(self.path).resolve()),
            "format": self.format,
            "input_size": self.input_size,
            "mean": self.mean.ravel().tolist(),
            "std": self.std.ravel().tolist(),
            "resize_mode": self.resize_mode,
            "layout": self.layout,
            "dim": self.dim,
        }

    def prepare(self, image: Image.Image) -> np.ndarray:
        size = self.input_size
        if self.resize_mode == "center_crop":
            scale = size / min(image.size)
            image = image.resize(
                (max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                Image.Resampling.BICUBIC,
            )
            left, top = (image.width - size) // 2, (image.height - size) // 2
            image = image.crop((left, top, left + size, top + size))
        else:
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        if self.layout == "nhwc-uint8":
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
        return (pixels - self.mean) / self.std

    def embed(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        if not prepared:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = np.stack(prepared)
        return l2_normalize(self._run(batch if self.layout == "nhwc-uint8" else batch.astype(np.float32)))
