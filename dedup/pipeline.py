"""`run`: the stages in order over one run folder. Each stage skips what an earlier run finished.

    RUN_DIR/embeddings/   embed   (clip-retrieval layout)
    RUN_DIR/groups.parquet, pairs.parquet, find.json   find
    RUN_DIR/manifest.parquet                           select
    RUN_DIR/shards/ (or --out), RUN_DIR/summary.json   write
"""
from __future__ import annotations

from pathlib import Path

from dedup.atomic import remove_stale_temporaries
from dedup.errors import SettingsError
from dedup.progress import SILENT, Reporter
from dedup.settings import RunSettings
from dedup.stages.embed import embed
from dedup.stages.find import find
from dedup.stages.select import select
from dedup.stages.write import check_output_location, write
from dedup.sources import expand_shards


def embeddings_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "embeddings"


def run(settings: RunSettings, engine=None, reporter: Reporter = SILENT) -> dict:
    """embed -> find -> select -> write for `settings.shards`; returns the summary."""
    settings.validate()
    if not settings.shards:
        raise SettingsError("no input shards: give them on the command line or as shards = [...] in the config")
    urls = expand_shards(settings.shards)
    check_output_location(settings.output_dir(), urls)
    run_dir = Path(settings.run_dir)
    remove_stale_temporaries(run_dir)  # a killed run's leftovers are never valid outputs
    store = embeddings_dir(run_dir)
    embed(urls, store, settings.embed, engine=engine or settings.embed_engine(), reporter=reporter)
    find(store, run_dir, settings.find, reporter=reporter, engine=engine or settings.find_engine())
    select(store, run_dir, settings.select, reporter=reporter)
    return write(store, run_dir, settings.output_dir(), settings.write,
                 engine=engine or settings.write_engine(), reporter=reporter)


def purge_run(settings: RunSettings, against: list[str], reference_dir: str | Path | None = None,
              write_output: bool = True, engine=None, reporter: Reporter = SILENT) -> dict:
    """Embed the training shards and the reference set, drop the training samples that match, write the rest."""
    from dedup.stages.purge import purge

    settings.validate()
    run_dir = Path(settings.run_dir)
    remove_stale_temporaries(run_dir)
    store = embeddings_dir(run_dir)
    embed_engine = engine or settings.embed_engine()
    if settings.shards:
        urls = expand_shards(settings.shards)
        check_output_location(settings.output_dir(), urls)
        embed(urls, store, settings.embed, engine=embed_engine, reporter=reporter)
    reference_dir = Path(reference_dir) if reference_dir else run_dir / "reference"
    embed(expand_shards(against), reference_dir, settings.embed, engine=embed_engine, reporter=reporter)
    summary = {"purge": purge(store, reference_dir, run_dir, settings.find, reporter=reporter)}
    if write_output:
        summary["write"] = write(store, run_dir, settings.output_dir(), settings.write,
                                 engine=engine or settings.write_engine(), reporter=reporter)
    return summary


def planted_counts(options: dict, origin: str) -> tuple[int, int | list[int]]:
    """[plant] sources and copies, or tiers = [[sources, copies], ...] for heavy-tailed duplication
    (a few images copied hundreds of times, more copied tens of times)."""
    tiers = options.pop("tiers", None)
    if tiers is None:
        sources, copies = options.pop("sources", 10), options.pop("copies", 100)
        if not isinstance(copies, int):
            raise SettingsError(f"{origin} [plant] copies must be a number; for several counts use tiers = [[sources, copies], ...]")
        return sources, copies
    if "sources" in options or "copies" in options:
        raise SettingsError(f"{origin} [plant]: give tiers, or sources and copies, not both")
    try:
        copies = [int(count) for sources, count in tiers for _ in range(int(sources))]
    except (TypeError, ValueError):
        raise SettingsError(f"{origin} [plant] tiers must be [[sources, copies], ...], got {tiers!r}") from None
    return len(copies), copies


def verify_run(preset_name: str, run_dir: str | Path, reporter: Reporter = SILENT, shards: list[str] | None = None) -> dict:
    """A verify preset end to end: plant its data (if it says so), `dedup run`, then train and attack A and B."""
    from dedup.attack.verify import dedup_config, load_preset, verify, verify_settings
    from dedup.planting import plant
    from dedup.settings import load_settings

    preset = load_preset(preset_name)
    settings_for_verify = verify_settings(preset, preset_name)
    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").exists():
        if shards is None and "plant" in preset:
            options = dict(preset["plant"])
            data = run_dir / "data"
            if not (data / "planted.json").exists():
                sources, copies = planted_counts(options, preset_name)
                total = sum(copies) if isinstance(copies, list) else copies * sources
                reporter.info(f"verify: planting {total} copies of {sources} images into {data}")
                plant(options.pop("source"), data, sources=sources, copies=copies,
                      transforms=tuple(options.pop("transforms", ("exact", "reencode"))), limit=options.pop("unique", None),
                      shard_size=options.pop("shard_size", None), seed=options.pop("seed", 0))
            shards = [str(data)]
        if not shards:
            raise SettingsError(f"preset {preset_name!r} plants no data; give the shards to verify")
        settings = load_settings(dedup_config(preset))
        settings.shards, settings.run_dir = list(shards), str(run_dir)
        run(settings, reporter=reporter)
    return verify(run_dir, settings_for_verify, reporter=reporter)
