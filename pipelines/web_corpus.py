"""From a URL list to a deduplicated, decontaminated training set with a report.

download (img2dataset) -> embed -> find -> select -> purge (eval set) -> write -> report

.venv/bin/python pipelines/web_corpus.py urls.parquet --eval eval-images/ --run-dir runs/web --config default
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dedup.progress import SILENT, Reporter
from dedup.settings import DownloadSettings
from dedup.tools.download import download

try:  # run as a file (python pipelines/web_corpus.py) or imported as pipelines.web_corpus
    from pipelines.dedup_and_decontaminate import pipeline as dedup_and_decontaminate
except ModuleNotFoundError:
    from dedup_and_decontaminate import pipeline as dedup_and_decontaminate  # type: ignore[no-redef]

app = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode=None)


def pipeline(
    url_list: str | Path,
    eval_set: list[str],
    run_dir: str | Path,
    config: str = "default",
    download_settings: DownloadSettings | None = None,
    reporter: Reporter = SILENT,
) -> dict:
    downloaded = Path(run_dir) / "downloaded"
    fetched = download(url_list, downloaded, download_settings or DownloadSettings())
    return {"download": fetched, **dedup_and_decontaminate([str(downloaded)], eval_set, run_dir, config, reporter)}


@app.command()
def main(
    url_list: Path = typer.Argument(..., help="Parquet, CSV, TSV, JSON or TXT file of image URLs (and captions)."),
    eval_set: list[str] = typer.Option(..., "--eval", help="Eval set: shards, a folder of images, or an image."),
    run_dir: Path = typer.Option(Path("runs/web"), help="The run folder."),
    config: str = typer.Option("default", help="A config file or preset name."),
    image_size: int = typer.Option(256, help="Side images are resized to."),
    processes: int = typer.Option(2, help="Download processes."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Download the URL list, deduplicate, drop near-copies of the eval set, write the rest and a report."""
    settings = DownloadSettings(image_size=image_size, processes=processes)
    result = pipeline(url_list, eval_set, run_dir, config, settings, Reporter(quiet=quiet))
    typer.echo(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    app()
