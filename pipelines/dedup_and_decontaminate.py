"""Deduplicate a training set, then remove near-copies of an evaluation set, then report.

    embed -> find -> select -> purge (against the eval set) -> write -> report

Runs offline on the shared data by default: CIFAR-10's training shards as the corpus, its test shard as the
eval set.

    .venv/bin/python pipelines/dedup_and_decontaminate.py --run-dir runs/cifar-decontaminated
    .venv/bin/python pipelines/dedup_and_decontaminate.py 'data/{00000..00099}.tar' --eval eval/ --config default
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dedup import embed, find, load_settings, select, write
from dedup.io.runfolder import RunFolder
from dedup.progress import SILENT, Reporter
from dedup.stages.purge import purge
from dedup.tools.report import build_report

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
app = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode=None)


def pipeline(
    train: list[str], eval_set: list[str], run_dir: str | Path, config: str = "offline", reporter: Reporter = SILENT
) -> dict:
    """Each stage skips what an earlier run of it finished, so a rerun resumes."""
    settings = load_settings(config)
    folder = RunFolder(run_dir)
    embed(train, folder.embeddings, settings.embed, reporter=reporter)
    find(folder.embeddings, folder.root, settings.find, reporter=reporter)
    select(folder.embeddings, folder.root, settings.select, reporter=reporter)
    embed(eval_set, folder.reference, settings.embed, reporter=reporter)
    purged = purge(folder.embeddings, folder.reference, folder.root, settings.find, reporter=reporter)
    summary = write(folder.embeddings, folder.root, folder.shards, settings.write, reporter=reporter)
    return {"purge": purged, "summary": summary, "report": str(build_report(folder.root))}


@app.command()
def main(
    train: list[str] = typer.Argument(None, help="Training shards (default: CIFAR-10's training shards)."),
    eval_set: list[str] = typer.Option(None, "--eval", help="Eval set: shards, a folder of images, or an image."),
    run_dir: Path = typer.Option(Path("runs/dedup-and-decontaminate"), help="The run folder."),
    config: str = typer.Option("offline", help="A config file or preset name."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Deduplicate the training shards, drop near-copies of the eval set, write the rest and a report."""
    result = pipeline(
        train or [str(CIFAR / "cifar10-train-{00000..00004}.tar.gz")],
        eval_set or [str(CIFAR / "cifar10-test-00005.tar.gz")],
        run_dir,
        config,
        Reporter(quiet=quiet),
    )
    typer.echo(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    app()
