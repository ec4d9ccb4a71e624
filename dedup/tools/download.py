"""`download`: ingest a URL list (parquet/CSV/...) into WebDataset shards through img2dataset's own API.

img2dataset pins old releases (webdataset < 0.3, pandas < 3, albumentations < 2) and pulls wandb, so it
lives in an interpreter of its own: `make img2dataset` makes .venv-img2dataset; `--img2dataset-python` or
DEDUP_IMG2DATASET_PYTHON point elsewhere. Its output (shards, per-shard parquet and stats) is our input.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from dedup.errors import InputError, SettingsError
from dedup.io.atomic import write_json
from dedup.settings import DownloadSettings

CALL = """
import json, sys
from img2dataset import download
download(**json.load(sys.stdin))
"""


def find_img2dataset_python(explicit: str | None = None) -> str:
    candidates = [
        explicit,
        os.environ.get("DEDUP_IMG2DATASET_PYTHON"),
        ".venv-img2dataset/bin/python",
        str(Path(__file__).resolve().parents[2] / ".venv-img2dataset" / "bin" / "python"),
        sys.executable,
    ]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            probe = subprocess.run([candidate, "-c", "import img2dataset"], capture_output=True, env=_environment())
            if probe.returncode == 0:
                return candidate
    raise SettingsError(
        "img2dataset is not installed. It pins old webdataset and pandas, so give it its own environment: "
        "`make img2dataset` (python -m venv .venv-img2dataset && .venv-img2dataset/bin/pip install img2dataset), "
        "or point --img2dataset-python / DEDUP_IMG2DATASET_PYTHON at an interpreter that has it"
    )


def _environment() -> dict:
    return {**os.environ, "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1"}


def _input_format(url_list: Path, given: str | None) -> str:
    if given:
        return given
    suffix = url_list.suffix.lower().lstrip(".")
    if suffix in ("parquet", "csv", "tsv", "json", "txt"):
        return suffix
    raise SettingsError(f"cannot tell the format of {url_list}; give --input-format parquet|csv|tsv|json|txt")


def download(
    url_list: str | Path, out_dir: str | Path, settings: DownloadSettings | None = None, python: str | None = None
) -> dict:
    settings = settings or DownloadSettings()
    settings.validate()
    url_list, out_dir = Path(url_list), Path(out_dir)
    if not url_list.exists():
        raise InputError(f"URL list {url_list} does not exist")
    arguments = {
        "url_list": str(url_list.resolve()),
        "output_folder": str(out_dir.resolve()),
        "output_format": "webdataset",
        "input_format": _input_format(url_list, settings.input_format),
        "url_col": settings.url_col,
        "caption_col": settings.caption_col,
        "image_size": settings.image_size,
        "resize_mode": settings.resize_mode,
        "processes_count": settings.processes,
        "thread_count": settings.threads,
        "retries": settings.retries,
        "timeout": settings.timeout,
        "number_sample_per_shard": settings.samples_per_shard,
        "encode_quality": settings.encode_quality,
        "incremental_mode": "incremental" if settings.resume else "overwrite",
        "enable_wandb": False,
        "distributor": "multiprocessing",
    }
    interpreter = find_img2dataset_python(python)
    completed = subprocess.run(
        [interpreter, "-c", CALL], input=json.dumps(arguments), text=True, capture_output=True, env=_environment()
    )
    if completed.returncode != 0:
        tail = "\n".join(completed.stderr.strip().splitlines()[-8:])
        raise InputError(f"img2dataset failed on {url_list} (exit {completed.returncode}):\n{tail}")
    return summarize(out_dir, arguments, settings)


def summarize(out_dir: Path, arguments: dict, settings: DownloadSettings) -> dict:
    stats = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*_stats.json"))]
    errors: dict[str, int] = {}
    for item in stats:
        for message, count in (item.get("status_dict") or {}).items():
            if message != "success":
                errors[message] = errors.get(message, 0) + count
    summary = {
        "shards": sorted(p.name for p in out_dir.glob("*.tar")),
        "urls": sum(s.get("count", 0) for s in stats),
        "downloaded": sum(s.get("successes", 0) for s in stats),
        "failed_to_download": sum(s.get("failed_to_download", 0) for s in stats),
        "failed_to_resize": sum(s.get("failed_to_resize", 0) for s in stats),
        "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:20]),
        "settings": asdict(settings),
        "url_list": arguments["url_list"],
    }
    write_json(out_dir / "download.json", summary)
    return summary
