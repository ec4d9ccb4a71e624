"""The pipeline's commands: embed, find, select, write, run and purge."""

from __future__ import annotations

from pathlib import Path

import typer

from dedup.cli.options import (
    CONFIG,
    EMBEDDINGS,
    ENGINE,
    OUT,
    RUN_DIR,
    SET,
    handled,
    place,
    print_json,
    run_folder,
    settings_from,
    store_embedder,
    with_settings,
)

EMBED_OPTIONS = (
    "embed.embedder",
    "embed.model",
    "embed.pretrained",
    "embed.model_config",
    "embed.model_path",
    "embed.input_size",
    "embed.pixel_size",
    "embed.text",
    "embed.batch_size",
    "embed.workers",
    "embed.decode_threads",
    "embed.device",
    "embed.precision",
    "embed.runtime",
)
FIND_OPTIONS = (
    "find.threshold",
    "find.phash_radius",
    "find.pdq_radius",
    "find.exact",
    "find.index",
    "find.nprobe",
    "find.memory_budget_gb",
    "find.workers",
)


@with_settings(*EMBED_OPTIONS, *ENGINE)
def embed_command(
    shards: list[str] = typer.Argument(
        ..., help="Shard files, folders, brace patterns (data/{00000..00009}.tar) or URLs."
    ),
    run_dir: Path | None = RUN_DIR,
    out: Path | None = typer.Option(None, "--out", help="Embeddings folder (default RUN_DIR/embeddings)."),
    config: str | None = CONFIG,
    overrides: list[str] | None = SET,
    *,
    options: dict,
) -> None:
    """Hash and embed every sample (clip-retrieval layout: img_emb/*.npy + metadata/*.parquet)."""
    with handled() as reporter:
        from dedup.engine import stage_engine
        from dedup.stages.embed import embed

        settings = settings_from(config, overrides, options)
        target = out or run_folder(settings, run_dir).embeddings
        print_json(embed(shards, target, settings.embed, engine=stage_engine(settings, "embed"), reporter=reporter))


@with_settings(*FIND_OPTIONS, *ENGINE)
def find_command(
    run_dir: Path | None = RUN_DIR,
    embeddings: Path | None = EMBEDDINGS,
    config: str | None = CONFIG,
    overrides: list[str] | None = SET,
    *,
    options: dict,
) -> None:
    """Find duplicate pairs (exact, perceptual hash, embedding) and group them: groups.parquet."""
    with handled() as reporter:
        from dedup.engine import stage_engine
        from dedup.stages.find import find

        settings = settings_from(config, overrides, options)
        folder = run_folder(settings, run_dir)
        store = embeddings or folder.embeddings
        made_by = store_embedder(store)
        if made_by is not None:  # a store made elsewhere (clip-retrieval's) names no embedder of ours
            settings.check_threshold_fits_embedder(made_by=made_by)
        print_json(
            find(
                store,
                folder.root,
                settings.find,
                reporter=reporter,
                engine=stage_engine(settings, "find"),
            )
        )


@with_settings("select.policy", "select.diversify_captions", "select.labels")
def select_command(
    run_dir: Path | None = RUN_DIR,
    embeddings: Path | None = EMBEDDINGS,
    config: str | None = CONFIG,
    overrides: list[str] | None = SET,
    *,
    options: dict,
) -> None:
    """Apply the keep policy: manifest.parquet, one row per input sample with its decision and reason."""
    with handled() as reporter:
        from dedup.stages.select import select

        settings = settings_from(config, overrides, options)
        folder = run_folder(settings, run_dir)
        print_json(select(embeddings or folder.embeddings, folder.root, settings.select, reporter=reporter))


@with_settings("write.samples_per_shard", "write.prefix", "write.workers", *ENGINE)
def write_command(
    run_dir: Path | None = RUN_DIR,
    embeddings: Path | None = EMBEDDINGS,
    out: Path | None = OUT,
    config: str | None = CONFIG,
    overrides: list[str] | None = SET,
    *,
    options: dict,
) -> None:
    """Copy the kept samples into new shards, byte for byte, and write summary.json."""
    with handled() as reporter:
        from dedup.engine import stage_engine
        from dedup.stages.write import write

        settings = settings_from(config, overrides, options)
        folder = run_folder(settings, run_dir)
        print_json(
            write(
                embeddings or folder.embeddings,
                folder.root,
                out or settings.output,
                settings.write,
                engine=stage_engine(settings, "write"),
                reporter=reporter,
            )
        )


@with_settings(
    "embed.embedder",
    "embed.pretrained",
    "find.threshold",
    "select.policy",
    "embed.workers+write.workers:--workers",
    *ENGINE,
)
def run_command(
    shards: list[str] | None = typer.Argument(None, help="Input shards (default: shards = [...] of the config)."),
    config: str | None = CONFIG,
    overrides: list[str] | None = SET,
    run_dir: Path | None = RUN_DIR,
    out: Path | None = OUT,
    verify: str | None = typer.Option(None, "--verify", help="Then prove it: run `dedup verify` with this preset."),
    *,
    options: dict,
) -> None:
    """embed -> find -> select -> write, from a config with command-line overrides."""
    with handled() as reporter:
        from dedup.runner import run

        settings = settings_from(config, overrides, options)
        settings.check_threshold_fits_embedder()
        place(settings, shards, run_dir, out)
        if verify:  # a preset that cannot run here stops before the run, not after it
            from dedup.attack.verify import checked_preset

            checked_preset(verify)
        summary = run(settings, reporter=reporter)
        print_json(summary)
        reporter.info(
            f"[bold]{summary['input_samples']}[/bold] samples in: {summary['kept']} kept, {summary['dropped']} dropped as "
            f"duplicates, {summary['unreadable']} unreadable -> {summary['output_dir']}"
        )
        if verify:
            from dedup.attack.verify import verify_after_run
            from dedup.cli.tools import show_verify

            show_verify(verify_after_run(settings, verify, reporter))


@with_settings("find.threshold", "find.phash_radius")
def purge_command(
    shards: list[str] | None = typer.Argument(
        None, help="Training shards (default: the config's; none: reuse RUN_DIR/embeddings)."
    ),
    against: list[str] = typer.Option(
        ..., "--against", "-a", help="Reference set: shards, a folder of images, or one image (repeatable)."
    ),
    config: str | None = CONFIG,
    overrides: list[str] | None = SET,
    run_dir: Path | None = RUN_DIR,
    reference_embeddings: Path | None = typer.Option(
        None, help="Where the reference embeddings are kept and reused (default RUN_DIR/reference)."
    ),
    out: Path | None = OUT,
    write_output: bool = typer.Option(True, "--write/--no-write", help="Write the remaining samples as new shards."),
    *,
    options: dict,
) -> None:
    """Drop every training sample that is a near-copy of a reference image (eval decontamination, takedowns)."""
    with handled() as reporter:
        from dedup.runner import purge_run

        settings = settings_from(config, overrides, options)
        settings.check_threshold_fits_embedder()
        place(settings, shards, run_dir, out)
        print_json(purge_run(settings, list(against), reference_embeddings, write_output, reporter=reporter))


@with_settings("embed.workers+write.workers:--workers", *ENGINE)
def add_command(
    shards: list[str] = typer.Argument(..., help="The new shards."),
    config: str | None = CONFIG,
    overrides: list[str] | None = SET,
    run_dir: Path | None = RUN_DIR,
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default: the one the run wrote to)."),
    *,
    options: dict,
) -> None:
    """Deduplicate new shards against a finished run and each other, without redoing it: only they are embedded
    and searched; earlier keeps stay; new output shards, and removal lists for earlier ones."""
    with handled() as reporter:
        from dedup.runner import add

        settings = settings_from(config, overrides, options)
        place(settings, shards, run_dir, out)
        summary = add(settings, reporter=reporter)
        print_json(summary)
        reporter.info(
            f"add (increment {summary['increment']}): {summary['input_samples']} samples in all: {summary['kept']} "
            f"kept, {summary['dropped']} dropped, {summary['unreadable']} unreadable; "
            f"{summary.get('removed_from_earlier_output', 0)} earlier outputs listed for removal"
        )


def register(app: typer.Typer) -> None:
    for name, command in (
        ("embed", embed_command),
        ("find", find_command),
        ("select", select_command),
        ("write", write_command),
        ("run", run_command),
        ("add", add_command),
        ("purge", purge_command),
    ):
        app.command(name)(command)
