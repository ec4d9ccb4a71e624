"""The `dedup` command. It parses options, loads config and calls the Python API; it holds no logic.

Exit codes: 0 success; 1 a stage failed (rerun resumes); 2 unusable input; 3 invalid settings;
4 model weights unavailable; 130 interrupted.
"""
from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import typer

from dedup.errors import DedupError
from dedup.progress import Reporter
from dedup.settings import RunSettings, apply, load_settings

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Find and remove near-duplicate images in WebDataset shards before training image generators.",
)
STATE: dict = {"reporter": Reporter()}


@app.callback()
def main(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or messages; errors still go to stderr."),
    log_json: Optional[Path] = typer.Option(None, "--log-json", help="Append one JSON line per event to this file ('-' for stdout)."),
) -> None:
    stream = None
    if log_json is not None:
        stream = sys.stdout if str(log_json) == "-" else open(log_json, "a")
    STATE["reporter"] = Reporter(quiet=quiet, log_json=stream)


@contextmanager
def handled() -> Iterator[Reporter]:
    reporter: Reporter = STATE["reporter"]
    try:
        yield reporter
    except DedupError as error:
        reporter.event("error", kind=type(error).__name__, message=str(error), exit_code=error.exit_code)
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(error.exit_code) from None
    except MemoryError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("interrupted; rerun the same command to resume", err=True)
        raise typer.Exit(130) from None


def _settings(config: Optional[str], overrides: Optional[List[str]], **cli: dict) -> RunSettings:
    settings = load_settings(config, overrides)
    values = {section: {k: v for k, v in options.items() if v is not None} for section, options in cli.items()}
    return apply(settings, {k: v for k, v in values.items() if v}, "command line")


def _place(settings: RunSettings, shards: Optional[List[str]], run_dir: Optional[Path], out: Optional[Path]) -> None:
    """Command-line inputs and folders win over the config's."""
    if shards:
        settings.shards = list(shards)
    if run_dir:
        settings.run_dir = str(run_dir)
    if out:
        settings.output = str(out)


def _print(summary: dict) -> None:
    if not STATE["reporter"].quiet:
        typer.echo(json.dumps(summary, indent=2, default=str))


CONFIG = typer.Option(None, "--config", "-c", help="A TOML config file, or the name of a preset in configs/.")
SET = typer.Option(None, "--set", help="Override a config value: section.key=value (repeatable).")
RUN_DIR = typer.Option(None, "--run-dir", "-r", help="The run folder (default: from the config, else dedup-run).")
ENGINE = typer.Option(None, "--engine", help="local (processes on this machine) | ray (Ray Data actors).")
RAY_ADDRESS = typer.Option(None, "--ray-address", help="An existing Ray cluster (auto, ray://host:10001); default: start a local Ray.")
EMBEDDINGS = typer.Option(None, "--embeddings", help="Embeddings folder (default RUN_DIR/embeddings); a clip-retrieval output works too.")


def _run_dir(settings: RunSettings, run_dir: Optional[Path]) -> Path:
    return Path(run_dir) if run_dir else Path(settings.run_dir)


@app.command("embed")
def embed_command(
    shards: List[str] = typer.Argument(..., help="Shard files, folders, brace patterns (data/{00000..00009}.tar) or URLs."),
    run_dir: Optional[Path] = RUN_DIR,
    out: Optional[Path] = typer.Option(None, "--out", help="Embeddings folder (default RUN_DIR/embeddings)."),
    embedder: Optional[str] = typer.Option(None, help="clip | pixels | model"),
    model: Optional[str] = typer.Option(None, help="open_clip architecture, e.g. ViT-B-32."),
    pretrained: Optional[str] = typer.Option(None, help="open_clip pretrained tag or a local checkpoint path."),
    model_config: Optional[str] = typer.Option(None, help="open_clip model config JSON for a custom architecture."),
    model_path: Optional[str] = typer.Option(None, help="ONNX or TorchScript encoder (embedder model)."),
    input_size: Optional[int] = typer.Option(None, help="Input size of the exported model."),
    pixel_size: Optional[int] = typer.Option(None, help="Side of the thumbnail (embedder pixels)."),
    text: Optional[bool] = typer.Option(None, "--text/--no-text", help="Also embed captions (clip)."),
    batch_size: Optional[int] = typer.Option(None),
    workers: Optional[int] = typer.Option(None, help="Shard processes."),
    decode_threads: Optional[int] = typer.Option(None),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda"),
    precision: Optional[str] = typer.Option(None, help="auto | fp32 | fp16 | bf16"),
    runtime: Optional[str] = typer.Option(None, help="clip image tower: torch | onnx | onnx-int8 (ONNX Runtime, CPU)."),
    engine: Optional[str] = ENGINE,
    ray_address: Optional[str] = RAY_ADDRESS,
    config: Optional[str] = CONFIG,
    overrides: Optional[List[str]] = SET,
) -> None:
    """Hash and embed every sample (clip-retrieval layout: img_emb/*.npy + metadata/*.parquet)."""
    from dedup.stages.embed import embed

    with handled() as reporter:
        settings = _settings(config, overrides, embed=dict(
            embedder=embedder, model=model, pretrained=pretrained, model_config=model_config, model_path=model_path,
            input_size=input_size, pixel_size=pixel_size, text=text, batch_size=batch_size, workers=workers,
            decode_threads=decode_threads, device=device, precision=precision, runtime=runtime),
            engine=dict(kind=engine, address=ray_address))
        target = out or _run_dir(settings, run_dir) / "embeddings"
        _print(embed(shards, target, settings.embed, engine=settings.embed_engine(), reporter=reporter))


@app.command("find")
def find_command(
    run_dir: Optional[Path] = RUN_DIR,
    embeddings: Optional[Path] = EMBEDDINGS,
    threshold: Optional[str] = typer.Option(None, help="Cosine similarity for embedding duplicates, or 'off'."),
    phash_radius: Optional[str] = typer.Option(None, help="Hamming radius on the 64-bit perceptual hash, or 'off'."),
    exact: Optional[bool] = typer.Option(None, "--exact/--no-exact", help="Group identical image bytes."),
    index: Optional[str] = typer.Option(None, help="auto | flat | partitioned | ivf"),
    nprobe: Optional[int] = typer.Option(None),
    memory_budget_gb: Optional[float] = typer.Option(None),
    workers: Optional[int] = typer.Option(None, help="Partitioned search: units run at once."),
    engine: Optional[str] = ENGINE,
    ray_address: Optional[str] = RAY_ADDRESS,
    config: Optional[str] = CONFIG,
    overrides: Optional[List[str]] = SET,
) -> None:
    """Find duplicate pairs (exact, perceptual hash, embedding) and group them: groups.parquet."""
    from dedup.stages.find import find

    with handled() as reporter:
        settings = _settings(config, overrides, find=dict(
            threshold=threshold, phash_radius=phash_radius, exact=exact, index=index, nprobe=nprobe,
            memory_budget_gb=memory_budget_gb, workers=workers), engine=dict(kind=engine, address=ray_address))
        folder = _run_dir(settings, run_dir)
        _print(find(embeddings or folder / "embeddings", folder, settings.find, reporter=reporter,
                    engine=settings.find_engine()))


@app.command("select")
def select_command(
    run_dir: Optional[Path] = RUN_DIR,
    embeddings: Optional[Path] = EMBEDDINGS,
    policy: Optional[str] = typer.Option(None, help="one | cap:K | none"),
    config: Optional[str] = CONFIG,
    overrides: Optional[List[str]] = SET,
) -> None:
    """Apply the keep policy: manifest.parquet, one row per input sample with its decision and reason."""
    from dedup.stages.select import select

    with handled() as reporter:
        settings = _settings(config, overrides, select=dict(policy=policy))
        folder = _run_dir(settings, run_dir)
        _print(select(embeddings or folder / "embeddings", folder, settings.select, reporter=reporter))


@app.command("write")
def write_command(
    run_dir: Optional[Path] = RUN_DIR,
    embeddings: Optional[Path] = EMBEDDINGS,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output shard folder (default RUN_DIR/shards)."),
    samples_per_shard: Optional[int] = typer.Option(None),
    prefix: Optional[str] = typer.Option(None),
    workers: Optional[int] = typer.Option(None, help="Output shards written at once (threads; Ray actors with --engine ray)."),
    engine: Optional[str] = ENGINE,
    ray_address: Optional[str] = RAY_ADDRESS,
    config: Optional[str] = CONFIG,
    overrides: Optional[List[str]] = SET,
) -> None:
    """Copy the kept samples into new shards, byte for byte, and write summary.json."""
    from dedup.stages.write import write

    with handled() as reporter:
        settings = _settings(config, overrides, write=dict(samples_per_shard=samples_per_shard, prefix=prefix, workers=workers),
                             engine=dict(kind=engine, address=ray_address))
        folder = _run_dir(settings, run_dir)
        _print(write(embeddings or folder / "embeddings", folder, out or settings.output, settings.write,
                     engine=settings.write_engine(), reporter=reporter))


@app.command("run")
def run_command(
    shards: Optional[List[str]] = typer.Argument(None, help="Input shards (default: shards = [...] of the config)."),
    config: Optional[str] = CONFIG,
    overrides: Optional[List[str]] = SET,
    run_dir: Optional[Path] = RUN_DIR,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output shard folder (default RUN_DIR/shards)."),
    embedder: Optional[str] = typer.Option(None, help="clip | pixels | model"),
    pretrained: Optional[str] = typer.Option(None, help="open_clip pretrained tag or local checkpoint path."),
    threshold: Optional[str] = typer.Option(None, help="Cosine similarity threshold, or 'off'."),
    policy: Optional[str] = typer.Option(None, help="one | cap:K | none"),
    workers: Optional[int] = typer.Option(None, help="Shard processes for embed, threads for write (Ray actors with --engine ray)."),
    engine: Optional[str] = ENGINE,
    ray_address: Optional[str] = RAY_ADDRESS,
    verify: Optional[str] = typer.Option(None, "--verify", help="Then prove it: run `dedup verify` with this preset."),
) -> None:
    """embed -> find -> select -> write, from a config with command-line overrides."""
    from dedup.runner import run

    with handled() as reporter:
        settings = _settings(config, overrides, embed=dict(embedder=embedder, pretrained=pretrained, workers=workers),
                             find=dict(threshold=threshold), select=dict(policy=policy), write=dict(workers=workers),
                             engine=dict(kind=engine, address=ray_address))
        _place(settings, shards, run_dir, out)
        summary = run(settings, reporter=reporter)
        _print(summary)
        reporter.info(
            f"[bold]{summary['input_samples']}[/bold] samples in: {summary['kept']} kept, {summary['dropped']} dropped as "
            f"duplicates, {summary['unreadable']} unreadable -> {summary['output_dir']}"
        )
        if verify:
            from dedup.attack.presets import load_preset, verify_settings
            from dedup.attack.verify import verify as verify_stage

            verifying = verify_settings(load_preset(verify), verify)
            verifying.embed = settings.embed  # generations are confirmed through this run's store, as it was embedded
            print_verify_table(verify_stage(settings.run_dir, verifying, reporter=reporter), reporter)


@app.command("purge")
def purge_command(
    shards: Optional[List[str]] = typer.Argument(None, help="Training shards (default: the config's; none: reuse RUN_DIR/embeddings)."),
    against: List[str] = typer.Option(..., "--against", "-a", help="Reference set: shards, a folder of images, or one image (repeatable)."),
    config: Optional[str] = CONFIG,
    overrides: Optional[List[str]] = SET,
    run_dir: Optional[Path] = RUN_DIR,
    reference_embeddings: Optional[Path] = typer.Option(None, help="Where the reference embeddings are kept and reused (default RUN_DIR/reference)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output shard folder (default RUN_DIR/shards)."),
    threshold: Optional[str] = typer.Option(None, help="Cosine similarity threshold, or 'off'."),
    phash_radius: Optional[str] = typer.Option(None, help="Hamming radius, or 'off'."),
    write_output: bool = typer.Option(True, "--write/--no-write", help="Write the remaining samples as new shards."),
) -> None:
    """Drop every training sample that is a near-copy of a reference image (eval decontamination, takedowns)."""
    from dedup.runner import purge_run

    with handled() as reporter:
        settings = _settings(config, overrides, find=dict(threshold=threshold, phash_radius=phash_radius))
        _place(settings, shards, run_dir, out)
        _print(purge_run(settings, list(against), reference_embeddings, write_output, reporter=reporter))


@app.command("report")
def report_command(
    run_dir: Path = typer.Argument(..., help="The run folder."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file (default RUN_DIR/report.html)."),
    embeddings: Optional[Path] = EMBEDDINGS,
    max_groups: int = typer.Option(20, help="Largest groups shown."),
    pairs_per_band: int = typer.Option(4, help="Pairs shown per similarity band."),
) -> None:
    """Write one self-contained HTML report: counts, largest groups with thumbnails, pairs around the threshold."""
    from dedup.tools.report import build_report

    with handled() as reporter:
        path = build_report(run_dir, out, embeddings, max_groups=max_groups, pairs_per_band=pairs_per_band)
        reporter.info(f"report: {path} ({path.stat().st_size / 1024:,.0f} KiB)")
        typer.echo(str(path))


@app.command("calibrate")
def calibrate_command(
    run_dir: Path = typer.Argument(..., help="The run folder (its embeddings are sampled)."),
    embeddings: Optional[Path] = EMBEDDINGS,
    labels: Optional[Path] = typer.Option(None, help="Labelled pairs: planted.json, or CSV/parquet with a, b, duplicate."),
    sample: int = typer.Option(20_000, help="Rows sampled from the embeddings (labelled rows always included)."),
    low: float = typer.Option(0.80, help="Lowest threshold tried."),
    step: float = typer.Option(0.01, help="Step between thresholds."),
) -> None:
    """Groups and removals per threshold (and precision/recall with labels); suggests a threshold."""
    import numpy as np

    from dedup.tools.calibrate import calibrate

    with handled() as reporter:
        thresholds = tuple(round(float(t), 4) for t in np.arange(low, 0.9999, step))
        result = calibrate(embeddings or run_dir / "embeddings", run_dir, thresholds, sample, labels)
        columns = ["threshold", "pairs", "groups", "removed", "removed_fraction"] + (["precision", "recall", "f1"] if labels else [])
        from rich.table import Table

        table = Table(title=f"thresholds on {result.sample_rows:,} of {result.total_rows:,} samples")
        for column in columns:
            table.add_column(column, justify="right")
        for row in result.rows:
            style = "bold green" if row["threshold"] == result.suggested else None
            table.add_row(*[str(row[c]) for c in columns], style=style)
        reporter.console.print(table) if not reporter.quiet else None
        typer.echo(f"suggested threshold: {result.suggested} ({result.reason})")
        typer.echo(f"table: {run_dir / 'calibration.json'}, plot: {run_dir / 'calibration.png'}")


@app.command("download")
def download_command(
    url_list: Path = typer.Argument(..., help="Parquet, CSV, TSV, JSON or TXT file of image URLs (and captions)."),
    out: Path = typer.Argument(..., help="Output folder for the WebDataset shards."),
    url_col: str = typer.Option("url"),
    caption_col: Optional[str] = typer.Option("caption"),
    input_format: Optional[str] = typer.Option(None, help="parquet | csv | tsv | json | txt (default: from the suffix)."),
    image_size: int = typer.Option(256),
    resize_mode: str = typer.Option("border", help="no | border | keep_ratio | keep_ratio_largest | center_crop"),
    processes: int = typer.Option(2),
    threads: int = typer.Option(16),
    retries: int = typer.Option(2),
    timeout: int = typer.Option(10, help="Seconds per request."),
    samples_per_shard: int = typer.Option(10_000),
    resume: bool = typer.Option(True, "--resume/--overwrite", help="Skip shards img2dataset already finished."),
    img2dataset_python: Optional[str] = typer.Option(None, help="Interpreter with img2dataset installed."),
) -> None:
    """Download a URL list into shards with img2dataset (dead links and broken images are counted, not fatal)."""
    from dedup.tools.download import DownloadSettings, download

    with handled() as reporter:
        settings = DownloadSettings(url_col=url_col, caption_col=caption_col, input_format=input_format, image_size=image_size,
                                    resize_mode=resize_mode, processes=processes, threads=threads, retries=retries,
                                    timeout=timeout, samples_per_shard=samples_per_shard, resume=resume)
        summary = download(url_list, out, settings, img2dataset_python)
        _print(summary)
        reporter.info(f"download: {summary['downloaded']} of {summary['urls']} images into {len(summary['shards'])} shards "
                      f"({summary['failed_to_download']} failed to download, {summary['failed_to_resize']} failed to decode)")


@app.command("extract")
def extract_command(
    pipeline: Path = typer.Option(..., "--pipeline", help="A local folder holding a diffusers text-to-image pipeline (save_pretrained)."),
    run_dir: Optional[Path] = RUN_DIR,
    prompts: int = typer.Option(100, help="Attack with the captions of this many of the largest duplicate groups."),
    prefilter: int = typer.Option(0, help="Keep only this many captions, those the Wen et al. detector scores highest (0: all)."),
    generations: int = typer.Option(16, help="Generations per caption."),
    steps: int = typer.Option(50, help="Denoising steps per generation."),
    guidance_scale: float = typer.Option(7.5),
    size: Optional[int] = typer.Option(None, help="Image side (default: the pipeline's)."),
    delta: float = typer.Option(0.15, help="Tiled l2 within which two images are the same."),
    min_clique: int = typer.Option(10, help="Near-identical generations that flag a caption as memorized."),
    batch_size: int = typer.Option(8),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    seed: int = typer.Option(0),
    config: Optional[str] = CONFIG,
    overrides: Optional[List[str]] = SET,
) -> None:
    """Black-box extraction attack on a text-to-image pipeline, with the captions of the run's largest groups."""
    from dedup.attack.text_to_image import ExtractSettings, extract

    with handled() as reporter:
        settings = _settings(config, overrides)
        folder = _run_dir(settings, run_dir)
        report = extract(folder, pipeline, ExtractSettings(
            prompts=prompts, prefilter=prefilter, generations_per_prompt=generations, steps=steps,
            guidance_scale=guidance_scale, size=size, delta=delta, min_clique=min_clique, batch_size=batch_size,
            device=device, seed=seed), settings.embed, reporter)
        _print({k: report[k] for k in ("prompts", "flagged_prompts", "extracted_images", "extracted_groups", "figure", "seconds")})


@app.command("verify")
def verify_command(
    run_dir: Path = typer.Argument(..., help="The run folder (planted data and the dedup run go here when the preset plants)."),
    preset: str = typer.Option("cifar-quick", "--preset", "-p", help="configs/verify-PRESET.toml, or a path."),
    shards: Optional[List[str]] = typer.Option(None, "--shards", help="Verify these shards instead of the preset's planted data."),
) -> None:
    """Train model A on the original and B on the deduplicated set; compare membership AUC and extraction."""
    from dedup.attack.verify import verify_run

    with handled() as reporter:
        report = verify_run(preset, run_dir, reporter, shards)
        print_verify_table(report, reporter)


def print_verify_table(report: dict, reporter: Reporter) -> None:
    from rich.table import Table

    table = Table(title=f"verify: model A (original, {report['training_images']['A']} images) vs B (deduplicated, {report['training_images']['B']})")
    table.add_column("measure")
    table.add_column("A", justify="right")
    table.add_column("B", justify="right")
    for label, key in (("membership AUC, duplicated vs held-out", "membership_auc_duplicated_vs_heldout"),
                       ("membership AUC, unique vs held-out", "membership_auc_unique_vs_heldout"),
                       ("Wen detector AUC, duplicated vs unique captions", "detector_auc_duplicated_vs_unique_prompts"),
                       ("captions flagged (clique), of the duplicated", "flagged_prompts"),
                       ("control captions flagged", "flagged_control_prompts"),
                       ("images extracted", "extracted_images"),
                       ("generations", "generations"),
                       ("training seconds", None)):
        if key is not None and key not in report["A"]:
            continue
        values = [report[m]["training"]["seconds"] if key is None else report[m][key] for m in ("A", "B")]
        table.add_row(label, *("n/a" if value is None else str(value) for value in values))
    reporter.console.print(table)
    typer.echo(json.dumps({k: report[k] for k in ("extracted_reduction", "figures", "seconds")}, indent=2))


@app.command("demo")
def demo_command(
    out: Path = typer.Argument(Path("demo-data"), help="Where to write the demo shards."),
    seed: int = typer.Option(0),
) -> None:
    """Build demo shards from the real photos that ship with scikit-image, with planted copies."""
    from dedup.tools.demo import build_demo

    with handled() as reporter:
        planted = build_demo(out, seed=seed)
        reporter.info(
            f"wrote {planted.samples} samples in {len(planted.shards)} shards to {out}/shards, with "
            f"{sum(len(g) - 1 for g in planted.groups)} planted copies of {len(planted.groups)} photos "
            f"(ground truth: {out}/shards/planted.json)"
        )
        typer.echo(str(Path(out) / "shards"))


if __name__ == "__main__":
    app()
