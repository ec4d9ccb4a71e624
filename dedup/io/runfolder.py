"""A run folder's files, each named once, by the stage that writes it, and the tables read back with an error
that names the stage to run first.

Apart from the stages, so that a stage reads another's output without importing its code (`find` imports
faiss, which `dedup write` should not pay for)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dedup.errors import InputError

if TYPE_CHECKING:  # the paths need no pyarrow: `dedup --help` should not import it
    import pyarrow as pa


class RunFolder:
    """RUN_DIR and every path in it: stages and tools ask it, never spell a file name themselves."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    # embed: the embeddings store (clip-retrieval layout; dedup/io/store.py owns its inside)
    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"

    @property
    def reference(self) -> Path:
        """purge: the reference set's embeddings store."""
        return self.root / "reference"

    # find
    @property
    def pairs(self) -> Path:
        return self.root / "pairs.parquet"

    @property
    def groups(self) -> Path:
        return self.root / "groups.parquet"

    @property
    def find_summary(self) -> Path:
        return self.root / "find.json"

    @property
    def find_units(self) -> UnitsFolder:
        """The partitioned search's unit plans and pairs while find runs on an engine (removed when it ends)."""
        return UnitsFolder(self.root / "find-units")

    @property
    def partitioning(self) -> Path:
        """The partitioned search's top split, kept so that `dedup add` routes only its new rows
        (dedup/search/routed.py); absent when find searched another way."""
        return self.root / "partitioning.npz"

    # select (and purge, which adds to the manifest)
    @property
    def manifest(self) -> Path:
        return self.root / "manifest.parquet"

    @property
    def purge_summary(self) -> Path:
        return self.root / "purge.json"

    # write
    @property
    def shards(self) -> Path:
        """The output shards, unless the run names another folder."""
        return self.root / "shards"

    @property
    def staging(self) -> Path:
        """write: the output shards of a remote output folder, before they are published to it."""
        return self.root / "shards-staging"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    # tools
    @property
    def report(self) -> Path:
        return self.root / "report.html"

    # add
    @property
    def increments(self) -> Path:
        """add: the run's increments (dedup/stages/increment.py), the first being the run itself."""
        return self.root / "increments.json"

    def increment_snapshot(self, number: int) -> Path:
        """add: what increment `number` began from (the manifest, pairs and groups as they were)."""
        return self.root / "increments" / str(number)

    @property
    def labels(self) -> Path:
        """review: a person's decisions about pairs (dedup/io/labels.py); select and calibrate read them."""
        return self.root / "labels.parquet"

    @property
    def calibration(self) -> Path:
        return self.root / "calibration.json"

    @property
    def calibration_plot(self) -> Path:
        return self.root / "calibration.png"

    # verify and extract
    @property
    def planted_data(self) -> Path:
        """verify: the shards a preset plants its copies into."""
        return self.root / "data"

    @property
    def planted(self) -> Path:
        """verify: what was planted into `planted_data` (dedup/tools/planting.py)."""
        return planted_record(self.planted_data)

    def arm(self, name: str) -> RunFolder:
        """verify: the run of another dedup arm on the same data (B-exact, B-hash, ...)."""
        return RunFolder(self.root / "arms" / name)

    @property
    def verify_preset(self) -> Path:
        """verify: the preset whose data the folder holds (a run of another preset into it stops)."""
        return self.root / "verify-preset.json"

    @property
    def verify_report(self) -> Path:
        return self.root / "verify.json"

    def verify_model(self, name: str) -> Path:
        return self.root / f"verify-model-{name}.pt"

    def verify_generations(self, name: str) -> Path:
        return self.root / f"verify-generations-{name}.npz"

    def verify_checkpoint(self, name: str) -> Path:
        """verify: model `name`'s training state while it trains (removed once the model is saved)."""
        return self.root / f"verify-model-{name}.checkpoint.pt"

    def verify_measured(self, name: str) -> Path:
        """verify: what the attacks measured on model `name` (written last: a rerun skips that model)."""
        return self.root / f"verify-measured-{name}.json"

    def verify_measured_arrays(self, name: str) -> Path:
        """verify: the per-image losses and closest pairs behind `verify_measured`."""
        return self.root / f"verify-measured-{name}.npz"

    @property
    def verify_counts_figure(self) -> Path:
        return self.root / "verify-counts.png"

    @property
    def verify_dose_figure(self) -> Path:
        return self.root / "verify-dose.png"

    @property
    def verify_pairs_figure(self) -> Path:
        return self.root / "verify-pairs.png"

    @property
    def extract_report(self) -> Path:
        return self.root / "extract.json"

    @property
    def extract_figure(self) -> Path:
        return self.root / "extract-pairs.png"

    def load_groups(self) -> pa.Table:
        return read_stage_table(self.groups, "find")

    def load_manifest(self, columns: list[str] | None = None) -> pa.Table:
        return read_stage_table(self.manifest, "select", columns)


class UnitsFolder:
    """find's working folder while the partitioned search runs on an engine: a plan and a pairs file per unit,
    and the marker, written last, that says which store and settings the plans were made for."""

    def __init__(self, root: Path):
        self.root = root

    @property
    def plans_marker(self) -> Path:
        return self.root / "plans.json"

    @property
    def partitioning(self) -> Path:
        return self.root / "partitioning.npz"

    def plan(self, number: int) -> Path:
        return self.root / f"plan-{number:05d}.npz"

    def unit_pairs(self, number: int) -> Path:
        return self.root / f"pairs-{number:05d}.npz"


def removals_record(shard_folder: Path) -> Path:
    """write: beside the output shards, the keys each input shard lost (dedup/stages/write_plan.py)."""
    return shard_folder / "removals.json"


def planted_record(data_folder: Path) -> Path:
    """Beside planted shards: what was planted where (dedup/tools/planting.py)."""
    return data_folder / "planted.json"


def read_stage_table(path: Path, stage: str, columns: list[str] | None = None) -> pa.Table:
    from dedup.io.atomic import read_parquet

    if not path.exists():
        raise InputError(f"{path} does not exist; run `dedup {stage}` first")
    return read_parquet(path, columns)


def load_groups(run_dir: str | Path) -> pa.Table:
    return RunFolder(run_dir).load_groups()


def load_manifest(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """manifest.parquet of a run folder, or that file itself; `columns`: just those the manifest has of them."""
    path = Path(path)
    if path.is_dir():
        return RunFolder(path).load_manifest(columns)
    return read_stage_table(path, "select", columns)


def output_location(settings) -> Path | str:
    """A run's output folder (`settings`: RunSettings): a path, or an fsspec URL kept as it is (a Path would fold
    its '//'); RUN_DIR/shards unless `output` names another."""
    from dedup.io.sources import is_remote

    if settings.output and is_remote(settings.output):
        return settings.output
    return Path(settings.output) if settings.output else RunFolder(settings.run_dir).shards
