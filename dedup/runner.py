"""`run`: the stages in order over one run folder. Each stage skips what an earlier run finished.

RUN_DIR/embeddings/   embed   (clip-retrieval layout)
RUN_DIR/groups.parquet, pairs.parquet, find.json   find
RUN_DIR/manifest.parquet                           select
RUN_DIR/shards/ (or --out), RUN_DIR/summary.json   write
"""

from __future__ import annotations

from pathlib import Path

from dedup.engine import stage_engine
from dedup.errors import SettingsError
from dedup.io.atomic import remove_stale_temporaries
from dedup.io.runfolder import RunFolder, output_location
from dedup.io.sources import expand_shards
from dedup.progress import SILENT, Reporter
from dedup.settings import RunSettings
from dedup.stages.embed import embed
from dedup.stages.find import find
from dedup.stages.select import select
from dedup.stages.write import check_output_location, write


def embeddings_dir(run_dir: str | Path) -> Path:
    return RunFolder(run_dir).embeddings


def run(settings: RunSettings, engine=None, reporter: Reporter = SILENT) -> dict:
    """embed -> find -> select -> write for `settings.shards`; returns the summary."""
    settings.validate()
    if not settings.shards:
        raise SettingsError("no input shards: give them on the command line or as shards = [...] in the config")
    urls = expand_shards(settings.shards)
    check_output_location(output_location(settings), urls)
    run_dir = Path(settings.run_dir)
    remove_stale_temporaries(run_dir)  # a killed run's leftovers are never valid outputs
    store = embeddings_dir(run_dir)
    embed(urls, store, settings.embed, engine=engine or stage_engine(settings, "embed"), reporter=reporter)
    find(store, run_dir, settings.find, reporter=reporter, engine=engine or stage_engine(settings, "find"))
    select(store, run_dir, settings.select, reporter=reporter)
    return write(
        store,
        run_dir,
        output_location(settings),
        settings.write,
        engine=engine or stage_engine(settings, "write"),
        reporter=reporter,
    )


def add(settings: RunSettings, engine=None, reporter: Reporter = SILENT) -> dict:
    """Deduplicate `settings.shards`, new shards, against the finished run in `settings.run_dir` (and each
    other) without redoing it: dedup/stages/increment.py. Resumes an increment a kill interrupted."""
    from dedup.io.atomic import read_json
    from dedup.stages import increment as increments

    settings.validate()
    if not settings.shards:
        raise SettingsError("no shards to add: give the new shards on the command line")
    folder = RunFolder(settings.run_dir)
    urls = expand_shards(settings.shards)
    if settings.output is None and folder.summary.exists():  # the output folder the run was written to
        settings.output = read_json(folder.summary).get("output_dir")
    check_output_location(output_location(settings), urls)
    remove_stale_temporaries(folder.root)
    increments.check_same_settings(folder, settings.find)
    increment = increments.begin(folder, urls, reporter)
    store = folder.embeddings
    embed(
        increments.IncrementLog.of(folder).shards(),
        store,
        settings.embed,
        engine=engine or stage_engine(settings, "embed"),
        reporter=reporter,
    )
    increments.find_new(store, folder, increment, settings.find, reporter)
    chosen = select(store, folder.root, settings.select, reporter, first=increments.earlier_keeps(folder, increment))
    increments.record_increment(folder, increment, chosen)
    summary = write(
        store,
        folder.root,
        output_location(settings),
        settings.write,
        engine=engine or stage_engine(settings, "write"),
        reporter=reporter,
        increment=increment.number,
    )
    increments.finish(folder, increment)
    return {**summary, "increment": increment.number}


def purge_run(
    settings: RunSettings,
    against: list[str],
    reference_dir: str | Path | None = None,
    write_output: bool = True,
    engine=None,
    reporter: Reporter = SILENT,
) -> dict:
    """Embed the training shards and the reference set, drop the training samples that match, write the rest."""
    from dedup.stages.purge import purge

    settings.validate()
    run_dir = Path(settings.run_dir)
    remove_stale_temporaries(run_dir)
    store = embeddings_dir(run_dir)
    embed_engine = engine or stage_engine(settings, "embed")
    if settings.shards:
        urls = expand_shards(settings.shards)
        check_output_location(output_location(settings), urls)
        embed(urls, store, settings.embed, engine=embed_engine, reporter=reporter)
    reference_dir = Path(reference_dir) if reference_dir else RunFolder(run_dir).reference
    embed(expand_shards(against), reference_dir, settings.embed, engine=embed_engine, reporter=reporter)
    summary = {"purge": purge(store, reference_dir, run_dir, settings.find, reporter=reporter)}
    if write_output:
        summary["write"] = write(
            store,
            run_dir,
            output_location(settings),
            settings.write,
            engine=engine or stage_engine(settings, "write"),
            reporter=reporter,
        )
    return summary
