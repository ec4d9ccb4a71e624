"""Every option of every stage, with defaults, validation and loading from a TOML config plus overrides.

One dataclass per stage; the CLI and the Python API build the same objects, so both accept the same options.
A config key that does not exist, or a value out of range, is refused before any work starts.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dedup.errors import SettingsError


@dataclass
class EmbedSettings:
    embedder: str = "clip"  # clip | pixels | model
    model: str = "ViT-B-32"
    pretrained: str | None = "laion2b_s34b_b79k"  # an open_clip tag or a local checkpoint path
    model_config: str | None = None  # an open_clip model config JSON for architectures it does not ship
    device: str = "auto"
    precision: str = "auto"  # auto: fp16 on CUDA, fp32 on CPU
    runtime: str = "torch"  # clip image tower: torch | onnx | onnx-int8 (ONNX Runtime, exported once and cached)
    text: bool = False  # also store caption embeddings (txt_emb/), clip only
    pixel_size: int = 16
    model_path: str | None = None
    input_size: int = 224
    mean: list[float] | None = None
    std: list[float] | None = None
    resize_mode: str = "resize"
    batch_size: int = 64
    workers: int = 1  # shard processes; the clip embedder is best with 1 (torch uses every core)
    decode_threads: int = 2
    max_pixels: int = 64_000_000
    max_member_bytes: int = 256 * 1024 * 1024

    def validate(self) -> None:
        from dedup.embedders import EMBEDDERS

        if self.embedder not in EMBEDDERS:
            raise SettingsError(f"unknown embedder {self.embedder!r}; choose one of {', '.join(EMBEDDERS)}")
        _positive(batch_size=self.batch_size, workers=self.workers, decode_threads=self.decode_threads,
                  max_pixels=self.max_pixels, pixel_size=self.pixel_size, input_size=self.input_size)
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise SettingsError(f"precision must be auto, fp32, fp16 or bf16, got {self.precision!r}")
        if self.runtime not in ("torch", "onnx", "onnx-int8"):
            raise SettingsError(f"runtime must be torch, onnx or onnx-int8, got {self.runtime!r}")

    def embedder_options(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class FindSettings:
    exact: bool = True
    phash_radius: int | None = 4  # Hamming radius on the 64-bit perceptual hash; None: off
    threshold: float | None = 0.95  # cosine similarity at or above which two embeddings are duplicates; None: off
    # two weak signals that agree: cosine >= corroborate_threshold AND Hamming <= corroborate_radius
    corroborate_threshold: float | None = None
    corroborate_radius: int = 12
    index: str = "auto"  # auto | flat | partitioned | ivf
    nprobe: int = 16  # ivf
    memory_budget_gb: float = 8.0  # flat and ivf hold every vector; partitioned reads them from disk as it goes
    # above this many vectors, auto picks the partitioned search: exact search costs N^2 x dim
    exact_search_max: int = 20_000
    # partitioned: vectors a partition; how near a partition boundary (in typical duplicate displacements)
    # a vector must lie to be compared across it (higher: more recall, more work; see dedup/search/partitioned.py)
    leaf_size: int = 1_024
    boundary: float = 2.0
    threads: int = 0  # 0: all cores
    workers: int = 1  # partitioned search: units run at once (each uses `threads` BLAS threads)
    unit_rows: int = 262_144  # partitioned search: rows a unit reads into memory (float32, 2 KiB a 512-d row)

    def search_threshold(self) -> float | None:
        """The cosine the embedding search must reach to serve every embedding-based signal; None: no search."""
        wanted = [t for t in (self.threshold, self.corroborate_threshold) if t is not None]
        return min(wanted) if wanted else None

    def validate(self) -> None:
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise SettingsError(f"threshold must be in (0, 1] (a cosine similarity), got {self.threshold}")
        if self.corroborate_threshold is not None and not 0.0 < self.corroborate_threshold <= 1.0:
            raise SettingsError(f"corroborate_threshold must be in (0, 1], got {self.corroborate_threshold}")
        if not 0 <= self.corroborate_radius <= 32:
            raise SettingsError(f"corroborate_radius must be between 0 and 32 bits, got {self.corroborate_radius}")
        if self.phash_radius is not None and not 0 <= self.phash_radius <= 32:
            raise SettingsError(f"phash_radius must be between 0 and 32 bits, got {self.phash_radius}")
        if self.index not in ("auto", "flat", "partitioned", "ivf"):
            raise SettingsError(f"index must be auto, flat, partitioned or ivf, got {self.index!r}")
        _positive(nprobe=self.nprobe, memory_budget_gb=self.memory_budget_gb, exact_search_max=self.exact_search_max,
                  leaf_size=self.leaf_size, workers=self.workers,
                  unit_rows=self.unit_rows)
        if self.boundary < 0:
            raise SettingsError(f"boundary must be >= 0 (0: no comparison across partitions), got {self.boundary}")
        if not (self.exact or self.phash_radius is not None or self.threshold is not None or self.corroborate_threshold is not None):
            raise SettingsError("every signal is off: enable exact, phash_radius or threshold")


@dataclass
class SelectSettings:
    policy: str = "one"  # one | cap:K | none

    def validate(self) -> None:
        parse_policy(self.policy)


@dataclass
class WriteSettings:
    samples_per_shard: int = 10_000
    prefix: str = "dedup"
    # output shards written at once, on threads (or Ray actors): one is copied while others are flushed to disk;
    # 8.9 GB with fsyncs, 1 / 2 / 4 threads: 18.1 / 12.6 / 11.4 s at best (docs/benchmarks.md)
    workers: int = 4
    # shard: each shard and its marker fsynced as it is written (as `cp` then `sync`; an fsync pass at the end
    # instead measured no faster); none: left to the OS, as `cp` and img2dataset leave it
    sync: str = "shard"

    def validate(self) -> None:
        _positive(samples_per_shard=self.samples_per_shard, workers=self.workers)
        if self.sync not in ("shard", "none"):
            raise SettingsError(f"write.sync must be shard or none, got {self.sync!r}")
        if "/" in self.prefix or not self.prefix:
            raise SettingsError(f"prefix must be a plain file name prefix, got {self.prefix!r}")


@dataclass
class EngineSettings:
    kind: str = "local"  # local | ray
    address: str = ""  # ray: an existing cluster ("auto", "ray://head:10001"); empty starts a local Ray
    gpus_per_worker: float = -1.0  # ray: GPUs each embed actor asks for; -1: one where the cluster has GPUs

    def validate(self) -> None:
        if self.kind not in ("local", "ray"):
            raise SettingsError(f"engine must be local or ray, got {self.kind!r}")
        if self.gpus_per_worker < 0 and self.gpus_per_worker != -1:
            raise SettingsError(f"gpus_per_worker must be >= 0, or -1 for one where GPUs exist; got {self.gpus_per_worker}")

    def make(self, workers: int, uses_gpu: bool = False, threads: bool = False):
        """The engine for a stage; `uses_gpu`: the stage's units can use a GPU (embed); `threads`: they wait on
        I/O outside the GIL, so the local engine runs them on threads (write)."""
        from dedup.engine import make_engine

        return make_engine(self.kind, workers, self.address, self.gpus_per_worker if uses_gpu else 0.0, threads)


@dataclass
class RunSettings:
    shards: list[str] = field(default_factory=list)
    run_dir: str = "dedup-run"
    output: str | None = None  # output shard folder; default RUN_DIR/shards
    embed: EmbedSettings = field(default_factory=EmbedSettings)
    find: FindSettings = field(default_factory=FindSettings)
    select: SelectSettings = field(default_factory=SelectSettings)
    write: WriteSettings = field(default_factory=WriteSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)

    def validate(self) -> None:
        for part in (self.embed, self.find, self.select, self.write, self.engine):
            part.validate()

    def output_dir(self) -> Path:
        return Path(self.output) if self.output else Path(self.run_dir) / "shards"

    def embed_engine(self):
        return self.engine.make(self.embed.workers, uses_gpu=True)

    def write_engine(self):
        return self.engine.make(self.write.workers, threads=True)

    def find_engine(self):
        return self.engine.make(self.find.workers)


def parse_policy(policy: str) -> tuple[str, int | None]:
    if policy in ("one", "none"):
        return policy, None
    if policy.startswith("cap:"):
        try:
            cap = int(policy[4:])
        except ValueError:
            cap = 0
        if cap >= 1:
            return "cap", cap
    raise SettingsError(f"unknown keep policy {policy!r}; use one, none or cap:K with K >= 1")


def _positive(**values: Any) -> None:
    for name, value in values.items():
        if value is None or value <= 0:
            raise SettingsError(f"{name} must be positive, got {value}")


SECTIONS = {"embed": EmbedSettings, "find": FindSettings, "select": SelectSettings, "write": WriteSettings,
            "engine": EngineSettings}
TOP_LEVEL = ("shards", "run_dir", "output")
OFF_VALUES = ("off", "none", "false")


def _coerce(cls: type, key: str, value: Any, origin: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    if key not in names:
        raise SettingsError(f"{origin}: unknown key {key!r}; known keys: {', '.join(sorted(names))}")
    if isinstance(value, str) and value.lower() in OFF_VALUES and key in ("phash_radius", "threshold", "pretrained", "corroborate_threshold"):
        return None
    default = getattr(cls(), key)
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if isinstance(default, int) and not isinstance(value, bool):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{origin}: {key} = {value!r} is not a valid {type(default).__name__}") from None
    if key in ("phash_radius",) and value is not None:
        return int(value)
    if key in ("threshold", "corroborate_threshold") and value is not None:
        return float(value)
    return value


def apply(settings: RunSettings, values: dict[str, Any], origin: str) -> RunSettings:
    """Apply a nested mapping ({"find": {"threshold": 0.9}, "shards": [...]}) onto settings."""
    for key, value in values.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise SettingsError(f"{origin}: [{key}] must be a table of options")
            section = getattr(settings, key)
            for inner_key, inner_value in value.items():
                setattr(section, inner_key, _coerce(SECTIONS[key], inner_key, inner_value, f"{origin} [{key}]"))
        elif key in TOP_LEVEL:
            if key == "shards" and isinstance(value, str):
                value = [value]
            setattr(settings, key, value)
        elif key == "input" and isinstance(value, dict) and set(value) <= {"shards"}:
            settings.shards = [value["shards"]] if isinstance(value.get("shards"), str) else list(value.get("shards", []))
        else:
            known = ", ".join([*TOP_LEVEL, *(f"[{s}]" for s in SECTIONS)])
            raise SettingsError(f"{origin}: unknown key {key!r}; known: {known}")
    return settings


def resolve_config_path(config: str) -> Path:
    """A config file path, or a preset name looked up in ./configs, then in the checkout's configs/."""
    path = Path(config)
    if path.is_file():
        return path
    for folder in (Path("configs"), Path(__file__).resolve().parents[1] / "configs"):
        preset = folder / f"{config}.toml"
        if preset.is_file():
            return preset
    raise SettingsError(f"config {config!r} not found (neither a file nor a preset configs/{config}.toml)")


def load_settings(config: str | None = None, overrides: list[str] | None = None) -> RunSettings:
    """Defaults, then the config file, then `section.key=value` overrides."""
    settings = RunSettings()
    if config:
        path = resolve_config_path(config)
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise SettingsError(f"config {path} is not valid TOML: {error}") from error
        apply(settings, values, str(path))
    for override in overrides or []:
        apply(settings, parse_override(override), f"--set {override}")
    return settings


def parse_override(text: str) -> dict[str, Any]:
    if "=" not in text:
        raise SettingsError(f"--set {text!r}: write it as section.key=value, e.g. find.threshold=0.9")
    dotted, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    parts = dotted.strip().split(".")
    if len(parts) == 1:
        return {parts[0]: value}
    if len(parts) == 2:
        return {parts[0]: {parts[1]: value}}
    raise SettingsError(f"--set {text!r}: use section.key=value")
