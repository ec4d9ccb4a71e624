"""The CLIP image tower on ONNX Runtime: exported from the loaded torch model once, cached by a digest of
the architecture and weights, optionally with int8 dynamic quantization of its matrix products.

A quantized tower is checked against the fp32 torch tower when it is made: if the cosine between their
embeddings of a probe batch falls under MIN_COSINE, it is refused with a clear error (int8 must not change
which images count as duplicates)."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

from dedup.errors import SettingsError
from dedup.io.atomic import atomic_open

MIN_COSINE = 0.99
PROBE_IMAGES = 8


def cache_dir() -> Path:
    return Path(os.environ.get("DEDUP_CACHE", Path.home() / ".cache" / "dedup")) / "onnx"


def weights_digest(model: str, weights: str) -> str:
    path = Path(weights)
    identity = f"{model}|{weights}"
    if path.is_file():
        stat = path.stat()
        identity += f"|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def probe_batch(example) -> np.ndarray:
    """Deterministic images at the tower's input size: smooth gradients plus texture, not all noise."""
    import torch

    generator = torch.Generator().manual_seed(0)
    size = example.shape[-1]
    ramp = torch.linspace(-1.5, 1.5, size)
    base = ramp[None, None, :, None] * ramp[None, None, None, :]
    noise = torch.randn((PROBE_IMAGES, 3, size, size), generator=generator)
    return (base * torch.linspace(0.5, 2, PROBE_IMAGES)[:, None, None, None] + 0.5 * noise).numpy().astype(np.float32)


class OnnxImageTower:
    def __init__(self, path: Path):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle threads sleep instead of spinning: the images are decoded in threads beside the model, and a
        # spinning thread takes their core (embedding Flickr8k: 77 s of CPU instead of 86, docs/quality.md)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(
            self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0],
            dtype=np.float32,
        )

    @classmethod
    def for_model(cls, visual, example, model: str, weights: str, quantize: bool) -> OnnxImageTower:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise SettingsError(
                "runtime onnx needs onnxruntime, a dependency of dedup that is missing: pip install onnxruntime"
            ) from None
        digest = weights_digest(model, weights)
        fp32_path = cache_dir() / f"{model}-{digest}.onnx"
        if not fp32_path.exists():
            export(visual, example, fp32_path)
        if not quantize:
            return cls(fp32_path)
        int8_path = cache_dir() / f"{model}-{digest}-int8r.onnx"  # r: reduce_range (older -int8 files were not)
        if not int8_path.exists():
            quantize_tower(fp32_path, int8_path)
        tower = cls(int8_path)
        check_agreement(visual, tower, probe_batch(example), int8_path)
        return tower


def export(visual, example, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    # an inference-mode tensor cannot be traced; and with gradients off, torch swaps attention for a fused
    # kernel that ONNX does not know, so the trace runs with them on
    example = example.float().clone()
    with atomic_open(path, "wb") as handle, torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter: no onnxscript needed
        torch.onnx.export(
            visual.float().eval(),
            example,
            handle,  # type: ignore[arg-type]  # a file object is accepted as well as a path
            input_names=["image"],
            output_names=["embedding"],
            dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}},
            dynamo=False,
        )


def quantize_tower(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    temporary = target.with_suffix(".partial.onnx")
    # reduce_range (7-bit weights): CPUs without VNNI multiply u8 x s8 in pairs that saturate 16 bits, which
    # costs full-range weights their agreement with fp32 (measured: docs/benchmarks.md, embed)
    quantize_dynamic(
        str(source),
        str(temporary),
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gemm"],
        reduce_range=True,
    )
    temporary.replace(target)


def check_agreement(visual, tower: OnnxImageTower, probe: np.ndarray, path: Path) -> None:
    import torch

    with torch.inference_mode():
        reference = visual(torch.from_numpy(probe)).numpy()
    quantized = tower(probe)
    cosine = (reference * quantized).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(quantized, axis=1))
    if float(cosine.min()) < MIN_COSINE:
        raise SettingsError(
            f"int8 image tower {path} agrees with fp32 only to cosine {float(cosine.min()):.4f} (< {MIN_COSINE}) on "
            "probe images; use runtime onnx (fp32) for this model"
        )
