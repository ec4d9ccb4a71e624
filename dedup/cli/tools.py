"""The commands around a run: report, calibrate, verify, extract, download and demo."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dedup.cli.options import (
    CONFIG,
    EMBEDDINGS,
    RUN_DIR,
    SET,
    handled,
    print_json,
    reporter,
    run_folder,
    settings_from,
    with_settings,
)
from dedup.io.runfolder import RunFolder


@with_settings("report.max_groups", "report.max_members", "report.pairs_per_band")
def report_command(
    run_dir: Path = typer.Argument(..., help="The run folder."),
    out: Path | None = typer.Option(None, "--out", "-o", help="HTML file (default RUN_DIR/report.html)."),
    embeddings: Path | None = EMBEDDINGS,
    config: str | None = CONFIG,
    overrides: list[str] | None = SET,
    *,
    options: dict,
) -> None:
    """Write one self-contained HTML report: counts, largest groups with thumbnails, pairs around the threshold."""
    with handled() as current:
        from dedup.settings import load_tool_settings
        from dedup.tools.report import build_report

        settings = load_tool_settings("report", config, overrides, options)
        path = build_report(run_dir, out, embeddings, settings)
        current.info(f"report: {path} ({path.stat().st_size / 1024:,.0f} KiB)")
        typer.echo(str(path))


@with_settings("calibrate.sample", "calibrate.low", "calibrate.step")
def calibrate_command(
    run_dir: Path = typer.Argument(..., help="The run folder (its embeddings are sampled)."),
    embeddings: Path | None = EMBEDDINGS,
    labels: Path | None = typer.Option(
        None,
        help="Labelled pairs: planted.json, or CSV/parquet with a, b, duplicate (default RUN_DIR/labels.parquet, "
        "the labels of `dedup review`, when there is one).",
    ),
    config: str | None = CONFIG,
    overrides: list[str] | None = SET,
    *,
    options: dict,
) -> None:
    """Groups and removals per threshold (and precision/recall with labels); suggests a threshold."""
    with handled() as current:
        from dedup.settings import load_tool_settings
        from dedup.tools.calibrate import calibrate, calibration_table

        settings = load_tool_settings("calibrate", config, overrides, options)
        if labels is None and RunFolder(run_dir).labels.exists():
            labels = RunFolder(run_dir).labels
            current.info(f"calibrate: precision and recall from the labels made in review, {labels}")
        result = calibrate(embeddings or RunFolder(run_dir).embeddings, run_dir, labels, settings)
        if not current.quiet:
            current.console.print(calibration_table(result, labelled=labels is not None))
        typer.echo(f"suggested threshold: {result.suggested} ({result.reason})")
        typer.echo(f"table: {RunFolder(run_dir).calibration}, plot: {RunFolder(run_dir).calibration_plot}")


def review_command(
    run_dir: Path = typer.Argument(..., help="The run folder (after find; select's decisions are shown when present)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; anything but loopback is announced as such."),
    port: int = typer.Option(8765, help="Port (0: any free one; the address is printed)."),
    embeddings: Path | None = EMBEDDINGS,
    near_miss_sample: int = typer.Option(
        20_000, help="Rows searched for near misses just below the threshold (0: show only the pairs found)."
    ),
) -> None:
    """Look at the run's pairs (closest to the threshold first) and groups in the browser; label pairs with the
    keyboard into RUN_DIR/labels.parquet, which select and calibrate then use."""
    with handled() as current:
        from dedup.errors import require_extra

        require_extra("starlette", "review", "dedup review")
        require_extra("uvicorn", "review", "dedup review")
        from dedup.review.server import serve

        serve(run_dir, host, port, embeddings, current, near_miss_sample)


@with_settings(
    "download.url_col",
    "download.caption_col",
    "download.input_format",
    "download.image_size",
    "download.resize_mode",
    "download.processes",
    "download.threads",
    "download.retries",
    "download.timeout",
    "download.samples_per_shard",
    "download.resume:--resume",
)
def download_command(
    url_list: Path = typer.Argument(..., help="Parquet, CSV, TSV, JSON or TXT file of image URLs (and captions)."),
    out: Path = typer.Argument(..., help="Output folder for the WebDataset shards."),
    img2dataset_python: str | None = typer.Option(None, help="Interpreter with img2dataset installed."),
    config: str | None = CONFIG,
    overrides: list[str] | None = SET,
    *,
    options: dict,
) -> None:
    """Download a URL list into shards with img2dataset (dead links and broken images are counted, not fatal)."""
    with handled() as current:
        from dedup.settings import load_tool_settings
        from dedup.tools.download import download

        settings = load_tool_settings("download", config, overrides, options)
        summary = download(url_list, out, settings, img2dataset_python)
        print_json(summary)
        current.info(
            f"download: {summary['downloaded']} of {summary['urls']} images into {len(summary['shards'])} shards "
            f"({summary['failed_to_download']} failed to download, {summary['failed_to_resize']} failed to decode)"
        )


@with_settings(
    "extract.prompts",
    "extract.prefilter",
    "extract.generations_per_prompt:--generations",
    "extract.steps",
    "extract.guidance_scale",
    "extract.size",
    "extract.delta",
    "extract.min_clique",
    "extract.batch_size",
    "extract.device",
    "extract.seed",
)
def extract_command(
    pipeline: Path = typer.Option(
        ..., "--pipeline", help="A local folder holding a diffusers text-to-image pipeline (save_pretrained)."
    ),
    run_dir: Path | None = RUN_DIR,
    config: str | None = CONFIG,
    overrides: list[str] | None = SET,
    *,
    options: dict,
) -> None:
    """Black-box extraction attack on a text-to-image pipeline, with the captions of the run's largest groups."""
    with handled() as current:
        from dedup.attack.text_to_image import extract
        from dedup.settings import load_tool_settings

        settings = settings_from(config, overrides, options)
        attack = load_tool_settings("extract", config, overrides, options)
        report = extract(run_folder(settings, run_dir).root, pipeline, attack, settings.embed, current)
        print_json(
            {
                k: report[k]
                for k in ("prompts", "flagged_prompts", "extracted_images", "extracted_groups", "figure", "seconds")
            }
        )


def verify_command(
    run_dir: Path = typer.Argument(
        ..., help="The run folder (planted data and the dedup run go here when the preset plants)."
    ),
    preset: str = typer.Option("cifar-quick", "--preset", "-p", help="configs/verify-PRESET.toml, or a path."),
    shards: list[str] | None = typer.Option(
        None, "--shards", help="Verify these shards instead of the preset's planted data."
    ),
    overrides: list[str] | None = typer.Option(
        None, "--set", help="Override a preset value: section.key=value, e.g. model.device=cuda (repeatable)."
    ),
    arms: str | None = typer.Option(
        None,
        "--arms",
        help="Train and measure only these arms now, comma-separated (e.g. A,B-exact); a later run reuses them.",
    ),
    dedup_only: bool = typer.Option(
        False, "--dedup-only", help="Plant and deduplicate, train nothing: what each arm keeps, by edit."
    ),
) -> None:
    """Train model A on the original and B on the deduplicated set; compare membership AUC and extraction.
    Rerun the same command after an interruption: it continues from the last checkpoint."""
    with handled() as current:
        from dedup.attack.verify import verify_run

        only = [] if dedup_only else [name.strip() for name in arms.split(",") if name.strip()] if arms else None
        report = verify_run(preset, run_dir, current, shards, overrides, only)
        if dedup_only:
            print_json({k: report.get(k) for k in ("training_images", "copies_by_edit")})
            return
        show_verify(report)


def verify_tables_command(
    document: Path = typer.Argument(Path("docs/verify.md"), help="The document whose verify-table blocks to render."),
    results: Path = typer.Option(
        Path("docs/results/verify"), "--results", help="The folder of the verify.json files the blocks name."
    ),
    check: bool = typer.Option(False, "--check", help="Write nothing; exit 1 when a block differs from its results."),
) -> None:
    """Render every table of docs/verify.md from the committed verify.json files (or check that they match)."""
    with handled() as current:
        from dedup.attack.tables import render_document

        changed = render_document(document, results, check=check)
        if check and changed:
            current.info(f"{document}: the tables {', '.join(changed)} differ from {results}; run without --check")
            raise typer.Exit(1)
        typer.echo(f"{document}: {len(changed)} table(s) {'would change' if check else 'rewritten'}")


def show_verify(report: dict) -> None:
    from dedup.attack.figures import verify_table

    reporter().console.print(verify_table(report))
    typer.echo(json.dumps({k: report[k] for k in ("extracted_reduction", "complete", "figures", "seconds")}, indent=2))


def demo_command(
    out: Path = typer.Argument(Path("demo-data"), help="Where to write the demo shards."),
    seed: int = typer.Option(0),
) -> None:
    """Build demo shards from the real photos that ship with scikit-image, with planted copies."""
    with handled() as current:
        from dedup.tools.demo import build_demo

        planted = build_demo(out, seed=seed)
        current.info(
            f"wrote {planted.samples} samples in {len(planted.shards)} shards to {out}/shards, with "
            f"{sum(len(g) - 1 for g in planted.groups)} planted copies of {len(planted.groups)} photos "
            f"(ground truth: {out}/shards/planted.json)"
        )
        typer.echo(str(Path(out) / "shards"))


def register(app: typer.Typer) -> None:
    for name, command in (
        ("report", report_command),
        ("calibrate", calibrate_command),
        ("review", review_command),
        ("download", download_command),
        ("extract", extract_command),
        ("verify", verify_command),
        ("verify-tables", verify_tables_command),
        ("demo", demo_command),
    ):
        app.command(name)(command)
