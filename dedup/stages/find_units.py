"""find's partitioned search as engine units: after the first split (routing every vector once, in this
process), each unit's joins are written to `find-units/plan-NNNNN.npz`, the engine runs the units (local
processes or Ray), and each unit writes its pairs to `find-units/pairs-NNNNN.npz` last, as its completion
marker. A rerun with the same store and settings reuses the plans and runs only the units without pairs;
the folder is removed once find has written its outputs.

A unit opens the store itself, memory-mapped, and reads only the rows its joins need (`partition_units.run_unit`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

import numpy as np

from dedup.engine import Unit, run_units
from dedup.io.atomic import atomic_open, read_json, write_json
from dedup.io.runfolder import RunFolder
from dedup.progress import Reporter
from dedup.search import partition_units, partitioned
from dedup.search.routed import KeptPartitioning

_HELD: dict = {}  # the vectors the driver holds (in memory or memory-mapped), for units that run in its process


@lru_cache(maxsize=2)
def _memory_mapped(store_dir: str):
    """The store's vectors, memory-mapped (once per worker process)."""
    from dedup.io.store import EmbeddingStore

    return EmbeddingStore(store_dir).load(max_in_memory_bytes=0).embeddings


def search_unit(store_dir: str, plan_path: str, pairs_path: str, dim: int, settings: dict) -> dict:
    """One unit: its joins' pairs, written to `pairs_path`."""
    plan = partition_units.UnitPlan.load(plan_path)
    vectors = _HELD.get(store_dir)
    if vectors is None:
        vectors = _memory_mapped(store_dir)
    reader = partitioned.as_reader(vectors)
    q, r, stats = partition_units.run_unit(
        plan,
        reader,
        reader,
        dim,
        partitioned.PartitionSettings(**settings),
        one_source=True,
        gather=not isinstance(vectors, np.ndarray),
    )
    with atomic_open(pairs_path, "wb") as handle:
        np.savez(handle, query=q, indexed=r, stats=json.dumps(asdict(stats)))
    return {"pairs": len(q), "samples": plan.home_rows()}


def store_identity(store_dir: str | Path) -> list:
    """What the plans were made from: every embeddings part's name, size and modification time."""
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(Path(store_dir, "img_emb").glob("*.npy"))]


class EngineUnits:
    """find's `partition_units.UnitRunner`: the units of a self-join of one store run on an engine, resumable from
    the run folder."""

    def __init__(self, store_dir: str | Path, run_dir: str | Path, engine, reporter: Reporter, vectors=None):
        """`vectors`: the store's vectors as find loaded them; units that run in this process read them there
        instead of opening the store again (a second memory map of the same files would count its pages twice)."""
        self.store_dir, self.folder = str(store_dir), RunFolder(run_dir).find_units
        self.engine, self.reporter = engine, reporter
        if vectors is not None:
            _HELD[self.store_dir] = vectors

    def identity(self, settings: partitioned.PartitionSettings, rows: int) -> str:
        described = json.dumps([store_identity(self.store_dir), asdict(settings), rows], default=str)
        return hashlib.sha256(described.encode()).hexdigest()

    def saved_plans(self, settings: partitioned.PartitionSettings, rows: int) -> int | None:
        """How many unit plans a previous run left for this store and these settings; None if none (or stale)."""
        marker = self.folder.plans_marker
        if marker.exists() and read_json(marker).get("identity") == self.identity(settings, rows):
            return read_json(marker)["units"]
        shutil.rmtree(self.folder.root, ignore_errors=True)
        return None

    def save_plans(
        self,
        plans: list[partition_units.UnitPlan],
        settings: partitioned.PartitionSettings,
        rows: int,
        partitioning: partitioned.Partitioning | None,
    ) -> int:
        for number, plan in enumerate(plans):
            plan.save(self.folder.plan(number))
        if partitioning is not None:
            KeptPartitioning.of(partitioning, settings).save(self.folder.partitioning)
        write_json(self.folder.plans_marker, {"identity": self.identity(settings, rows), "units": len(plans)})  # last
        return len(plans)

    def saved_partitioning(self) -> partitioned.Partitioning | None:
        kept = KeptPartitioning.load(self.folder.partitioning)
        return None if kept is None else partitioned.Partitioning(kept.centroids, kept.rows, kept.rows)

    def run(self, count: int, dim: int, settings: partitioned.PartitionSettings) -> list[tuple]:
        pairs_path = [self.folder.unit_pairs(number) for number in range(count)]
        pending = [
            Unit(
                f"find unit {number}",
                search_unit,
                dict(
                    store_dir=self.store_dir,
                    plan_path=str(self.folder.plan(number)),
                    pairs_path=str(pairs_path[number]),
                    dim=dim,
                    settings=asdict(settings),
                ),
            )
            for number in range(count)
            if not pairs_path[number].exists()
        ]
        run_units(self.engine, pending, "find: partitions", total=count, what="units", reporter=self.reporter)
        results = []
        for path in pairs_path:
            with np.load(path) as saved:
                results.append(
                    (saved["query"], saved["indexed"], partitioned.PartitionStats(**json.loads(str(saved["stats"]))))
                )
        return results

    def release(self) -> None:
        """Forget the held vectors (the search is over, or failed)."""
        _HELD.pop(self.store_dir, None)

    def done(self) -> None:
        """find's outputs are written: the units' files are no longer needed."""
        shutil.rmtree(self.folder.root, ignore_errors=True)
