"""The settings of `dedup run` and its stages: one dataclass per stage, gathered in RunSettings."""

from __future__ import annotations

from dataclasses import dataclass, field

from dedup.errors import SettingsError
from dedup.settings.base import positive, setting

DEFAULT_MAX_MEMBER_BYTES = 256 * 1024 * 1024  # a larger tar member is recorded unreadable
# what kind of match a pair is (dedup/search/relations.py); unknown: not examined (a run from before relations)
RELATIONS = ("exact", "copy", "partial", "same_scene", "similar", "unknown")
EMBEDDERS = ("copydetect", "clip", "pixels", "model")
PRESET_FOR_EMBEDDER = {"clip": "clip", "pixels": "offline"}  # presets whose thresholds were set for that embedder
REGION_COUNTS = (0, 5, 9)  # crops embedded an image (dedup/search/regions.py)
PDQ_MAX_RADIUS = 63  # the search is exact up to here (32 chunks of 8 bits, one bit flipped in each)


@dataclass
class EmbedSettings:
    embedder: str = setting("copydetect", "copydetect (dedup's own, shipped) | clip | pixels | model")
    model: str = setting("ViT-B-32", "open_clip architecture, e.g. ViT-B-32.")
    pretrained: str | None = setting("laion2b_s34b_b79k", "open_clip pretrained tag or a local checkpoint path.")
    model_config: str | None = setting(None, "open_clip model config JSON for an architecture it does not ship.")
    device: str = setting("auto", "auto | cpu | cuda")
    precision: str = setting("auto", "auto | fp32 | fp16 | bf16 (auto: fp16 on CUDA, fp32 on CPU).")
    runtime: str = setting(
        "auto",
        "auto | torch | onnx | onnx-int8 (clip only): ONNX Runtime runs the image model exported once and cached; "
        "auto is onnx for copydetect, torch for clip.",
    )
    text: bool = setting(False, "Also embed captions (txt_emb/), clip only.")
    pixel_size: int = setting(16, "Side of the thumbnail (embedder pixels).")
    model_path: str | None = setting(
        None, "ONNX or TorchScript encoder (embedder model); other copydetect weights (embedder copydetect)."
    )
    input_size: int = setting(224, "Input size of the exported model.")
    mean: list[float] | None = setting(None, "Normalisation mean of the exported model (default ImageNet's).")
    std: list[float] | None = setting(None, "Normalisation std of the exported model (default ImageNet's).")
    resize_mode: str = setting("resize", "How the exported model's input is made: resize | center_crop.")
    regions: int = setting(
        0,
        "Crops of each image embedded beside it (0, 5 or 9: 55 % of each side, at the corners and centre or on a "
        "3 x 3 grid), so find proposes composites and large crops to verification (find.region_threshold); each "
        "costs one more model call an image (docs/quality.md).",
    )
    batch_size: int = setting(64, "Images per model call.")
    workers: int = setting(1, "Shard processes (clip is best with 1: torch uses every core).")
    decode_threads: int = setting(2, "Threads decoding images for each shard process.")
    decode_size: int | None = setting(
        256,
        "Decode JPEGs at the smallest DCT scale (1/2, 1/4, 1/8) whose sides are at least this, and hash and embed "
        "that: a large web photo costs a fraction of its full decode, and the model reads 128 px ('off': full "
        "size; at least 64, PDQ's reduction). Width and height recorded are the image's own.",
    )
    max_pixels: int = setting(64_000_000, "Larger images are recorded unreadable (decompression bombs).")
    max_member_bytes: int = setting(DEFAULT_MAX_MEMBER_BYTES, "Larger tar members are recorded unreadable.")
    remote_tries: int = setting(
        5, "Remote shards: failures in a row (timeout, 429, 5xx, dropped connection) before a shard is unreadable."
    )
    remote_timeout: float = setting(60.0, "Remote shards: seconds without a byte before a read has failed.")
    remote_backoff: float = setting(1.0, "Remote shards: the first wait after a failure, doubled each time (max 30).")

    def validate(self) -> None:
        if self.embedder not in EMBEDDERS:
            raise SettingsError(f"unknown embedder {self.embedder!r}; choose one of {', '.join(EMBEDDERS)}")
        positive(
            batch_size=self.batch_size,
            workers=self.workers,
            decode_threads=self.decode_threads,
            max_pixels=self.max_pixels,
            pixel_size=self.pixel_size,
            input_size=self.input_size,
            remote_tries=self.remote_tries,
            remote_timeout=self.remote_timeout,
        )
        if self.regions not in REGION_COUNTS:
            raise SettingsError(
                f"embed.regions must be one of {', '.join(map(str, REGION_COUNTS))}, got {self.regions}"
            )
        if self.decode_size is not None and self.decode_size < 64:
            raise SettingsError(
                f"embed.decode_size must be 64 or more (PDQ hashes a 64x64 reduction), got {self.decode_size}"
            )
        if self.remote_backoff < 0:
            raise SettingsError(f"embed.remote_backoff must be 0 or more seconds, got {self.remote_backoff}")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise SettingsError(f"precision must be auto, fp32, fp16 or bf16, got {self.precision!r}")
        if self.runtime not in ("auto", "torch", "onnx", "onnx-int8"):
            raise SettingsError(f"runtime must be auto, torch, onnx or onnx-int8, got {self.runtime!r}")


@dataclass
class FindSettings:
    exact: bool = setting(True, "Group identical image bytes.")
    phash_radius: int | None = setting(None, "Hamming radius on the 64-bit perceptual hash, or 'off'.")
    pdq_radius: int | None = setting(
        31,
        "Hamming radius on the 256-bit PDQ hash, against the image's flips and quarter turns too; 'off' "
        "(PDQ's own threshold is 31).",
    )
    threshold: float | None = setting(
        0.85,
        "Cosine similarity at or above which two embeddings are duplicates, or 'off' (measured for copydetect "
        "in docs/quality.md; other embedders need their own).",
    )
    corroborate_threshold: float | None = setting(
        None, "Two weak signals that agree: cosine at or above this AND Hamming within corroborate_radius; 'off'."
    )
    corroborate_radius: int = setting(12, "Hamming radius of the corroborating perceptual hash.")
    verify_threshold: float | None = setting(
        0.3,
        "Embedding pairs from this cosine up to threshold count when local features confirm them (ORB + "
        "RANSAC, images read again from the shards); 'off'.",
    )
    verify_inliers: int = setting(30, "Keypoint matches one geometry must explain for a pair to be verified.")
    verify_per_row: int = setting(5, "Borderline partners verified per sample at most (the most similar).")
    verify_mirror_per_row: int = setting(
        2,
        "A borderline pair that falls short is matched again with one image mirrored (mirrored copies), when it "
        "is among this many most similar partners of one of its samples; 0: never.",
    )
    region_threshold: float | None = setting(
        0.35,
        "Where the store holds region vectors (embed.regions): a region of one image this similar to another "
        "whole image makes the pair a candidate for verification by local features; 'off'.",
    )
    region_per_row: int = setting(
        3,
        "Region candidates verified per sample and way of asking at most (its regions against whole images, its "
        "whole image and its mirror image against regions; the most similar).",
    )
    relations: bool = setting(
        True,
        "Say what kind of match each pair is (exact, copy, partial, same_scene, similar) from its alignment by "
        "local features, the images read again from the shards; select.drop_relations chooses which count.",
    )
    relate_per_row: int = setting(5, "Partners aligned per sample at most (the most similar); the rest: unknown.")
    low_detail_tolerance: float | None = setting(
        24.0,
        "Pairs of two low-detail images (text, digits, icons on flat backgrounds) count only when their 16x16 "
        "thumbnails differ by at most this many levels (99.5th percentile), or their hashes and colours agree; "
        "'off' trusts every signal on them.",
    )
    index: str = setting("auto", "auto | flat | partitioned | ivf")
    nprobe: int = setting(16, "Lists an IVF search visits.")
    memory_budget_gb: float = setting(
        8.0, "flat and ivf hold every vector; partitioned reads them from disk beyond this."
    )
    exact_search_max: int = setting(20_000, "Above this many vectors, auto picks the partitioned search.")
    leaf_size: int = setting(1_024, "Partitioned search: vectors a partition.")
    boundary: float = setting(
        2.0,
        "Partitioned search: how near a partition border (in typical duplicate displacements) "
        "a vector must lie to be compared across it.",
    )
    threads: int = setting(0, "BLAS threads (0: all cores).")
    workers: int = setting(1, "Partitioned search: units run at once.")
    unit_rows: int = setting(262_144, "Partitioned search: rows a unit reads into memory.")

    def search_threshold(self) -> float | None:
        """The cosine the embedding search must reach to serve every embedding-based signal; None: no search."""
        wanted = [t for t in (self.threshold, self.corroborate_threshold, self.verify_threshold) if t is not None]
        return min(wanted) if wanted else None

    def validate(self) -> None:
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise SettingsError(f"threshold must be in (0, 1] (a cosine similarity), got {self.threshold}")
        if self.corroborate_threshold is not None and not 0.0 < self.corroborate_threshold <= 1.0:
            raise SettingsError(f"corroborate_threshold must be in (0, 1], got {self.corroborate_threshold}")
        if self.verify_threshold is not None and not 0.0 < self.verify_threshold <= 1.0:
            raise SettingsError(
                f"verify_threshold must be in (0, 1] (a cosine similarity), got {self.verify_threshold}"
            )
        positive(
            verify_per_row=self.verify_per_row, relate_per_row=self.relate_per_row, region_per_row=self.region_per_row
        )
        if self.region_threshold is not None and not 0.0 < self.region_threshold <= 1.0:
            raise SettingsError(
                f"region_threshold must be in (0, 1] (a cosine similarity), got {self.region_threshold}"
            )
        if self.verify_mirror_per_row < 0:
            raise SettingsError(f"verify_mirror_per_row must be >= 0, got {self.verify_mirror_per_row}")
        if self.verify_inliers < 0:
            raise SettingsError(f"verify_inliers must be >= 0, got {self.verify_inliers}")
        if not 0 <= self.corroborate_radius <= 32:
            raise SettingsError(f"corroborate_radius must be between 0 and 32 bits, got {self.corroborate_radius}")
        if self.phash_radius is not None and not 0 <= self.phash_radius <= 32:
            raise SettingsError(f"phash_radius must be between 0 and 32 bits, got {self.phash_radius}")
        if self.pdq_radius is not None and not 0 <= self.pdq_radius <= PDQ_MAX_RADIUS:
            raise SettingsError(f"pdq_radius must be between 0 and {PDQ_MAX_RADIUS} bits, got {self.pdq_radius}")
        if self.low_detail_tolerance is not None and not 0 <= self.low_detail_tolerance <= 255:
            raise SettingsError(
                f"low_detail_tolerance must be between 0 and 255 gray levels, got {self.low_detail_tolerance}"
            )
        if self.index not in ("auto", "flat", "partitioned", "ivf"):
            raise SettingsError(f"index must be auto, flat, partitioned or ivf, got {self.index!r}")
        positive(
            nprobe=self.nprobe,
            memory_budget_gb=self.memory_budget_gb,
            exact_search_max=self.exact_search_max,
            leaf_size=self.leaf_size,
            workers=self.workers,
            unit_rows=self.unit_rows,
        )
        if self.boundary < 0:
            raise SettingsError(f"boundary must be >= 0 (0: no comparison across partitions), got {self.boundary}")
        if not (
            self.pdq_radius is not None
            or self.exact
            or self.phash_radius is not None
            or self.threshold is not None
            or self.corroborate_threshold is not None
        ):
            raise SettingsError("every signal is off: enable exact, phash_radius, pdq_radius or threshold")


@dataclass
class SelectSettings:
    policy: str = setting("one", "one | cap:K | none")
    prefer: str = setting(
        "largest",
        "Which copy a group keeps: largest (largest image, then longest caption, then first seen) | first (first "
        "seen, in input order).",
    )
    diversify_captions: bool = setting(
        False,
        "Copies a policy keeps beyond a group's best (cap:K, none) get other captions: another member's, else "
        "the caption with some words replaced; the original stays in the sample's json (Somepalli et al. 2023).",
    )
    labels: bool = setting(
        True,
        "Apply a person's labels from RUN_DIR/labels.parquet (dedup review): a pair labelled not a duplicate is "
        "kept apart, one labelled duplicate is joined, before groups are formed.",
    )
    drop_relations: list[str] = setting(
        help="The relations that make a pair duplicates (of " + ", ".join(RELATIONS) + "); a pair of another "
        "relation is kept apart before groups are formed. Why the default: docs/relations.md.",
        factory=lambda: list(RELATIONS),
    )

    def validate(self) -> None:
        unknown = [name for name in self.drop_relations if name not in RELATIONS]
        if unknown:
            raise SettingsError(
                f"select.drop_relations names {', '.join(map(repr, unknown))}, not a relation; "
                f"the relations are {', '.join(RELATIONS)}"
            )
        kind, _ = parse_policy(self.policy)
        if self.prefer not in ("largest", "first"):
            raise SettingsError(f"select.prefer must be largest or first, got {self.prefer!r}")
        if self.diversify_captions and kind == "one":
            raise SettingsError(
                "select.diversify_captions changes the captions of the copies a policy keeps, and policy one keeps "
                "none: use policy cap:K (or none) with it"
            )


@dataclass
class WriteSettings:
    samples_per_shard: int = setting(10_000, "Samples an output shard holds.")
    prefix: str = setting("dedup", "Output shard names: PREFIX-00000.tar.")
    workers: int = setting(4, "Output shards written at once (threads; Ray actors with --engine ray).")
    sync: str = setting("shard", "shard: fsync each shard before its marker; none: leave it to the OS, as cp does.")

    def validate(self) -> None:
        positive(samples_per_shard=self.samples_per_shard, workers=self.workers)
        if self.sync not in ("shard", "none"):
            raise SettingsError(f"write.sync must be shard or none, got {self.sync!r}")
        if "/" in self.prefix or not self.prefix:
            raise SettingsError(f"prefix must be a plain file name prefix, got {self.prefix!r}")


@dataclass
class EngineSettings:
    kind: str = setting("local", "local (processes on this machine) | ray (Ray Data actors).")
    address: str = setting("", "An existing Ray cluster (auto, ray://host:10001); default: start a local Ray.")
    gpus_per_worker: float = setting(-1.0, "ray: GPUs each embed actor asks for; -1: one where the cluster has GPUs.")

    def validate(self) -> None:
        if self.kind not in ("local", "ray"):
            raise SettingsError(f"engine must be local or ray, got {self.kind!r}")
        if self.gpus_per_worker < 0 and self.gpus_per_worker != -1:
            raise SettingsError(
                f"gpus_per_worker must be >= 0, or -1 for one where GPUs exist; got {self.gpus_per_worker}"
            )


@dataclass
class RunSettings:
    shards: list[str] = setting(help="Input shards: files, folders, brace patterns or URLs.", factory=list)
    run_dir: str = setting("dedup-run", "The run folder.")
    output: str | None = setting(None, "Output shard folder (default RUN_DIR/shards).")
    embed: EmbedSettings = setting(factory=EmbedSettings)
    find: FindSettings = setting(factory=FindSettings)
    select: SelectSettings = setting(factory=SelectSettings)
    write: WriteSettings = setting(factory=WriteSettings)
    engine: EngineSettings = setting(factory=EngineSettings)
    # which embedder's cosine find.threshold is, and where it came from, as the loader saw them: (embedder,
    # "the defaults" or the config's path); None once a threshold was given for whatever embedder is chosen
    threshold_origin: tuple[str, str] | None = field(default=("copydetect", "the defaults"), repr=False)

    def validate(self) -> None:
        for part in (self.embed, self.find, self.select, self.write, self.engine):
            part.validate()
        self.check_threshold_fits_embedder()

    def check_threshold_fits_embedder(self, made_by: str | None = None) -> None:
        """find.threshold is a cosine of one embedder's vectors: carried over to another embedder's (the one
        chosen, or the one a store was `made_by`) it would merge what it should not, or nothing, without a
        word. Stops unless the threshold was given."""
        if self.threshold_origin is None or self.find.threshold is None:
            return
        made_for, source = self.threshold_origin
        embedder = made_by or self.embed.embedder
        if embedder == made_for or embedder not in EMBEDDERS:
            return
        preset = PRESET_FOR_EMBEDDER.get(embedder)
        vectors = f"these embeddings were made by {embedder}, which" if made_by else f"embedder {embedder}"
        raise SettingsError(
            f"find.threshold {self.find.threshold} comes from {source}, where it is a cosine of the {made_for} "
            f"embedder; {vectors} needs its own: "
            + (f"use --config {preset} (made for it), or " if preset else "")
            + "give --threshold (or --set find.threshold=...)"
        )


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
