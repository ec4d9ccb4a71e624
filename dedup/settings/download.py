"""The settings of `dedup download` (img2dataset's options that matter here)."""

from __future__ import annotations

from dataclasses import dataclass

from dedup.errors import SettingsError
from dedup.settings.base import positive, setting

RESIZE_MODES = ("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop")


@dataclass
class DownloadSettings:
    url_col: str = setting("url", "Column of the image URLs.")
    caption_col: str | None = setting("caption", "Column of the captions ('off': none).")
    input_format: str | None = setting(None, "parquet | csv | tsv | json | txt (default: from the suffix).")
    image_size: int = setting(256, "Side images are resized to.")
    resize_mode: str = setting("border", " | ".join(RESIZE_MODES))
    processes: int = setting(2, "Download processes.")
    threads: int = setting(16, "Download threads a process.")
    retries: int = setting(2, "Retries of a failed request.")
    timeout: int = setting(10, "Seconds per request.")
    samples_per_shard: int = setting(10_000, "Samples an output shard holds.")
    encode_quality: int = setting(95, "JPEG quality of the stored images.")
    resume: bool = setting(True, "Skip shards img2dataset already finished (--overwrite: start again).")

    def validate(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise SettingsError(f"resize_mode must be one of {', '.join(RESIZE_MODES)}, got {self.resize_mode!r}")
        positive(
            image_size=self.image_size,
            processes=self.processes,
            threads=self.threads,
            samples_per_shard=self.samples_per_shard,
            timeout=self.timeout,
        )
