"""The Ray executor: the same steps, their scan and process parts spread over a Ray cluster.

    datakit dedupe big.jsonl out.jsonl --executor ray --address HEAD:6379 --workdir /shared/tmp
    pip install 'datakit[ray]'

How a step runs (compare datakit.pipeline.LocalExecutor, which does the same in one process):

1. ingest (driver): the input is read once with datakit's readers and cut into canonical Parquet
   shards of ``batch_size`` records under ``workdir``, a folder every node can read (a shared
   file system on a real cluster). A shard's first input position is its name.
2. scan (workers): an actor pool, one actor per CPU, each holding one instance of the step (an
   embedding model is loaded once per actor, not once per shard). Each actor scans shards and
   writes the step's tables into ``workdir``; a shuffled table (dedupe's band keys) is written
   into its bucket folders, so the shuffle is the file layout itself.
3. reduce (driver): the step's own ``reduce``, reading the tables back. For dedupe the driver
   holds the candidate pairs of one bucket at a time and the union-find over verified pairs.
4. process (workers): the decision of reduce (dedupe's removed records, select's choice) is put
   in the object store once; the actors process the shards in order and the driver writes what
   they return, so the output, the side files and the report equal the local executor's.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

import polars as pl

from datakit.errors import DatakitError
from datakit.io import scratch
from datakit.pipeline import BATCH_SIZE, Batch, Report, Sink, Source, Step, Tables, read_batches, scan_into, write_part
from datakit.record import from_frame, to_frame


class RayError(DatakitError):
    """Ray is missing or its cluster cannot be reached."""


def connect(address: str | None) -> Any:
    """Join the cluster at ``address`` (or start a local one), quietly: no progress bars and no
    worker output on the driver's terminal."""
    try:
        import ray
    except ImportError:
        raise RayError("the Ray executor needs Ray: pip install 'datakit[ray]'") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError) as exc:
            raise RayError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    return ray


class StepWorker:
    """One step instance living in a Ray actor (made remote in ``_worker_class``)."""

    def __init__(self, cls: type[Step], config: Any, paths: dict[str, str]):
        self.step = cls(config, paths)

    def check(self, shard: str) -> tuple[str, bool]:
        """(this node's polars version, whether it can read the first shard): the texts are
        normalised, and their characters classed, by polars' Unicode tables, so two nodes'
        tables are only comparable with one polars version."""
        return pl.__version__, Path(shard).exists()

    def scan(self, shard: str, start: int, tables_root: str) -> int:
        batch = _read_shard(shard, start)
        scan_into(Tables(tables_root, self.step.shuffle), self.step, batch)
        return len(batch)

    def take(self, decision: Any) -> None:
        self.step.take_decision(decision)

    def process(self, shard: str, start: int) -> Any:
        batch = _read_shard(shard, start)
        processed = self.step.process(batch)
        processed.side = {name: list(rows) for name, rows in processed.side.items()}
        return len(batch), processed


def _read_shard(shard: str, start: int) -> Batch:
    return Batch(list(from_frame(pl.read_parquet(shard))), start)


def _worker_class(ray: Any) -> Any:
    return ray.remote(num_cpus=1)(StepWorker)


class RayExecutor:
    """Runs a step's scan and process parts on a Ray cluster; see the module docstring."""

    name = "ray"

    def __init__(self, address: str | None = None, workdir: str | Path | None = None, batch_size: int = BATCH_SIZE):
        self.address = address
        self.workdir = workdir
        self.batch_size = batch_size

    def execute(self, step: Step, source: Source, sink: Sink, report: Report, from_format, read_options) -> None:
        ray = connect(self.address)
        from ray.util import ActorPool

        if self.workdir:
            Path(self.workdir).mkdir(parents=True, exist_ok=True)
        shared = scratch(self.workdir, f"{step.name}-ray-", folder=True)
        actors: list[Any] = []
        try:
            with report.phase("ingest"):  # the input read once, into Parquet shards the workers share
                shards = self._ingest(source, from_format, read_options, shared / "input", report.rows_not_records)
            cpus = max(1, math.floor(ray.cluster_resources().get("CPU", 1)))
            worker = _worker_class(ray)
            actors = [worker.remote(type(step), step.config, step.paths) for _ in range(min(cpus, len(shards)))]
            for version, readable in ray.get([actor.check.remote(shards[0][0]) for actor in actors]):
                if not readable:
                    raise RayError(
                        f"a Ray worker cannot read {shards[0][0]}: give --workdir a folder every node can read"
                    )
                if version != pl.__version__:
                    raise RayError(f"a Ray worker has polars {version}, the driver {pl.__version__}: use one version")
            pool = ActorPool(actors)
            if step.is_global():
                tables_root = str(shared / "tables")
                with report.phase("scan"):
                    list(pool.map(lambda actor, shard: actor.scan.remote(shard[0], shard[1], tables_root), shards))
                with report.phase("reduce"):
                    step.reduce(Tables(tables_root, step.shuffle))
                    decision = ray.put(step.decision())
                    ray.get([actor.take.remote(decision) for actor in actors])
            with report.phase("process"):
                for count, processed in pool.map(lambda actor, shard: actor.process.remote(*shard), shards):
                    report.read += count
                    report.add(processed)
                    sink.write(processed)
        except ray.exceptions.RayTaskError as exc:  # a worker's error: the user's, or a bug, as if local
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, DatakitError) else exc) from None
        finally:
            for actor in actors:
                ray.kill(actor)
            shutil.rmtree(shared, ignore_errors=True)

    def _ingest(self, source: Source, from_format, read_options, folder: Path, not_records) -> list[tuple[str, int]]:
        shards = []
        _, batches = read_batches(source, from_format, read_options, self.batch_size, not_records)
        for batch in batches:
            path = folder / f"{batch.start:012d}.parquet"
            write_part(to_frame(batch.records), path)
            shards.append((str(path), batch.start))
        return shards
