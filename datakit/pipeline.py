"""The step contract, the registry of steps, the report every step fills, and the local executor.

A **step** is a class registered by name with a config dataclass (datakit.options: the single
source of its CLI flags, recipe keys and checks). It sees the input as batches of canonical
records and has up to three parts:

- ``process(batch)``: the per-batch part. It returns the records to write, rows for the step's
  side outputs (a rejects or clusters file) and why records were removed. Every step has it.
- ``scan(batch)`` and ``reduce(tables)``: the global part, for steps that must see every record
  before deciding about one (dedupe's clusters, select's choice, synth's generations). ``scan``
  turns a batch into small tables (keys, signatures, embeddings); the executor stores them,
  partitioned into buckets by a key where the step asks (``shuffle``), and ``reduce`` reads
  them back and decides. ``process`` then runs on a second pass over the input. A step that
  only removes records (dedupe) also says which, by position (``removals``): to a JSON-lines
  output the local executor then writes the rows it encoded on the first pass, and reads the
  input once.
- ``finish()``: records and side rows made at the end rather than per input record.

``scan`` and ``process`` are pure functions of a batch, so an executor may run them anywhere:
the LocalExecutor here runs them in this process with bounded memory (one batch at a time, the
tables on disk); datakit.ray_executor runs them as Ray tasks on a cluster. ``reduce`` runs where
the executor's driver is, and holds only what the decision needs.

Every step fills one Report (read, created, written, removed by reason, consumed) whose
``check()`` is the accounting identity: no record is lost without a reason.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import polars as pl

from datakit import formats
from datakit.errors import StepError
from datakit.formats import Read, ReadOptions, Rejected, Skipped
from datakit.hardware import default_workers
from datakit.io import (
    RowWriter,
    buffers_of,
    file_kind,
    json_line,
    refuse_overwrite,
    scratch,
    series_of_buffers,
    spool_stdin,
)
from datakit.options import StepConfig
from datakit.record import RecordError, few_gc_passes, from_frame, to_frame

BATCH_SIZE = 50_000  # records per batch: big enough for vectorised kernels, small enough to bound memory
BUCKETS = 16  # partitions of a shuffled table; reduce holds one at a time
ENCODED_ROWS = "_encoded_rows"  # the table of output rows encoded while scanning (see only_removes)
WORKERS_FROM_BYTES = 64 << 20  # JSON-lines inputs this large are scanned by worker processes


@dataclass
class Batch:
    """Canonical records and the input position of the first one (positions are global ids)."""

    records: list[dict[str, Any]]
    start: int
    # where each record came from ({"file", "line", "index"} of its source row), for reject rows
    locations: list[dict[str, Any]] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def where(self, k: int) -> dict[str, Any]:
        """Record k's source location, or its input position for records given in memory."""
        return self.locations[k] if self.locations else {"index": self.start + k}


@dataclass
class Processed:
    """What ``process`` (or ``finish``) gives back for one batch."""

    records: list[dict[str, Any]] = field(default_factory=list)  # to the output, in order
    side: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # rows for side outputs
    removed: Counter = field(default_factory=Counter)  # reason -> records not written
    figures: Counter = field(default_factory=Counter)  # step-specific counts, summed over batches
    created: int = 0  # how many of ``records`` the step made (rather than passed on)

    @classmethod
    def keeping(cls, records: list[dict[str, Any]], codes: np.ndarray, reasons: list[str]) -> Processed:
        """The records whose code is 0; the others removed for ``reasons[code - 1]``."""
        out = cls()
        for record, code in zip(records, codes.tolist(), strict=True):
            if code:
                out.removed[reasons[code - 1]] += 1
            else:
                out.records.append(record)
        return out


@dataclass
class SideOutput:
    """A file a step writes beside its output (default path: OUTPUT + suffix): JSONL rows that
    the step hands to the executor (``rows``), or a file the step writes itself (a plot)."""

    suffix: str
    help: str
    rows: bool = True


@dataclass
class Report:
    """What a step did, the same shape for every step (``datakit <step>`` prints ``text()``,
    recipes store ``to_dict()``)."""

    step: str
    input: str
    output: str
    settings: dict[str, Any]
    read: int = 0
    created: int = 0  # records the step made (synth)
    written: int = 0
    consumed: int = 0  # input records used to make others and not written themselves (synth seeds)
    removed: dict[str, int] = field(default_factory=dict)  # reason -> count
    # input rows that hold no record of their own, by reason: left out by a documented policy
    # (a P3 wrong-answer row), or used inside other records (an OpenAssistant parent message)
    rows_not_records: dict[str, int] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)  # step-specific numbers
    side_outputs: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    stopped: str | None = None  # why the step stopped early (a synth budget), if it did
    seconds: float = 0.0
    # where the time went, by phase in the order run (scan, reduce, write, finish): a slow run
    # says which part to look at, and a benchmark can print the split
    phases: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Adds the time spent in the ``with`` block to phase ``name``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - started

    def add(self, processed: Processed) -> None:
        self.written += len(processed.records)
        self.created += processed.created
        for reason, n in processed.removed.items():
            self.removed[reason] = self.removed.get(reason, 0) + n
        for key, n in processed.figures.items():
            self.figures[key] = self.figures.get(key, 0) + n

    def check(self) -> None:
        """The accounting identity: read + created = written + removed + consumed."""
        gone = sum(self.removed.values())
        if self.read + self.created != self.written + gone + self.consumed:
            raise RuntimeError(f"{self.step}: records unaccounted for (a bug in datakit): {self.to_dict()}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def text(self) -> str:
        lines = [f"{self.step}: {self.input} -> {self.output}", *self.notes]
        left = f"read {self.read}" + (f" + created {self.created}" if self.created else "")
        right = f"written {self.written} + removed {sum(self.removed.values())}"
        right += f" + consumed {self.consumed}" if self.consumed else ""
        lines.append(f"records: {left} = {right}")
        for reason, n in sorted(self.removed.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {n:>8}  {reason}")
        if self.rows_not_records:
            lines.append(f"input rows that are not records: {sum(self.rows_not_records.values())}")
            lines += [
                f"  {n:>8}  {reason}" for reason, n in sorted(self.rows_not_records.items(), key=lambda kv: -kv[1])
            ]
        for key, value in self.figures.items():
            lines.append(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
        for name, path in self.side_outputs.items():
            lines.append(f"{name}: {path}")
        if self.stopped:
            lines.append(f"stopped early: {self.stopped}; run again to continue (answers are cached)")
        shown = [f"{name} {seconds:.1f}s" for name, seconds in self.phases.items() if seconds >= 0.05]
        lines.append(f"time: {self.seconds:.1f}s" + (f" ({', '.join(shown)})" if len(shown) > 1 else ""))
        return "\n".join(lines)


class Step:
    """Base of every step; see the module docstring. A subclass sets ``name``, ``Config`` and
    ``process``, and for a global step ``scan`` and ``reduce``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[StepConfig]] = StepConfig
    output_format: ClassVar[str | None] = None  # None: the input's format; "canonical" when meta is added
    side_outputs: ClassVar[dict[str, SideOutput]] = {}
    shuffle: ClassVar[dict[str, str]] = {}  # scan table -> the column its buckets are made by

    def __init__(self, config: StepConfig, paths: dict[str, str] | None = None, **resources: Any):
        self.config = config
        self.paths = paths or {}  # side output name -> path
        self.resources = resources  # shared objects a caller may pass in (an Embedder)
        self.notes: list[str] = []
        self.figures: dict[str, Any] = {}
        self.stopped: str | None = None

    @classmethod
    def is_global(cls) -> bool:
        return cls.scan is not Step.scan

    @classmethod
    def help(cls) -> str:
        return (cls.__doc__ or "").strip().split("\n\n")[0]

    def scan(self, batch: Batch) -> dict[str, pl.DataFrame]:
        raise NotImplementedError

    def reduce(self, tables: Tables) -> None:
        raise NotImplementedError

    def process(self, batch: Batch) -> Processed:
        raise NotImplementedError

    def finish(self) -> Processed:
        return Processed()

    def removals(self, start: int, count: int) -> tuple[np.ndarray, list[str]]:
        """For a step that only removes records and changes none (dedupe), after ``reduce``: a
        code for each record at positions [start, start + count), 0 where it is kept, else k for
        the k-th of the reasons returned with them. The local executor then writes the output
        from the rows it encoded while scanning instead of reading the input a second time."""
        raise NotImplementedError

    @classmethod
    def only_removes(cls) -> bool:
        return cls.removals is not Step.removals

    def allows_scan_workers(self) -> bool:
        """Whether the local executor may scan in worker processes, each with its own instance of
        the step: yes where ``scan`` is a pure function of the batch and an instance is cheap to
        make (no model to load in each worker)."""
        return False

    def decision(self) -> Any:
        """What ``process`` needs from ``reduce``: an executor that runs ``process`` in other
        processes sends it there (``take_decision``)."""
        return None

    def take_decision(self, decision: Any) -> None:
        """Receive ``decision()`` from the driver's instance."""

    def target_format(self, input_format: str) -> str:
        """The output's format when the user names none."""
        return self.output_format or input_format

    def consumed(self, read: int) -> int:
        """How many input records were used up rather than passed on or removed (synth seeds)."""
        return 0


class WholeSetStep(Step):
    """A step that needs every record in memory at once (shuffle, corrupt, synth): ``scan``
    stores the records, ``reduce`` hands them all to ``transform``, whose result is written."""

    def transform(self, records: list[dict[str, Any]]) -> Processed:
        raise NotImplementedError

    def scan(self, batch: Batch) -> dict[str, pl.DataFrame]:
        frame = to_frame(batch.records).with_row_index("position", offset=batch.start)
        return {"records": frame}

    def reduce(self, tables: Tables) -> None:
        frame = tables.scan("records")
        records = [] if frame is None else list(from_frame(frame.sort("position").drop("position").collect()))
        self.result = self.transform(records)

    def process(self, batch: Batch) -> Processed:
        return Processed()  # everything is written by finish

    def finish(self) -> Processed:
        return self.result


STEPS: dict[str, type[Step]] = {}


def register(cls: type[Step]) -> type[Step]:
    """Class decorator: make a step known to the CLI, recipes and executors by its name."""
    if cls.name in STEPS and STEPS[cls.name] is not cls:
        raise ValueError(f"two steps named {cls.name!r}")
    STEPS[cls.name] = cls
    return cls


def steps() -> dict[str, type[Step]]:
    """Every registered step, the built-in ones imported first."""
    import datakit.dedupe
    import datakit.filter
    import datakit.perturb
    import datakit.select
    import datakit.synth.step  # noqa: F401  (each module registers its step)

    return STEPS


def get(name: str) -> type[Step]:
    known = steps()
    if name not in known:
        raise StepError(f"unknown step {name!r}; steps: {', '.join(sorted(known))}")
    return known[name]


# --- the tables a scan writes and a reduce reads -----------------------------------------


class Tables:
    """Parquet parts under one folder per table; a shuffled table has a folder per bucket, so a
    reduce can read one bucket at a time. Executors on several machines write here too (a path
    all nodes share), each part under its own name."""

    def __init__(self, root: str | Path, shuffle: dict[str, str], buckets: int = BUCKETS):
        self.root = Path(root)
        self.shuffle = shuffle
        self.buckets = buckets

    def write(self, name: str, frame: pl.DataFrame, part: str) -> None:
        if frame.height == 0:
            return
        key = self.shuffle.get(name)
        if key is None:
            write_part(frame, self.root / name / f"{part}.parquet")
            return
        bucket = (frame[key].cast(pl.UInt64) % self.buckets).alias("_bucket")
        for (b,), piece in frame.with_columns(bucket).partition_by("_bucket", as_dict=True).items():
            write_part(piece.drop("_bucket"), self.root / name / f"bucket={b:03d}" / f"{part}.parquet")

    def scan(self, name: str) -> pl.LazyFrame | None:
        """Every part of a table, or None when no batch wrote any."""
        files = sorted((self.root / name).glob("**/*.parquet"))
        return pl.scan_parquet(files) if files else None

    def each_part(self, name: str) -> Iterator[pl.LazyFrame]:
        """Each part of an unshuffled table on its own (one batch's rows), to hold one at a time."""
        for path in sorted((self.root / name).glob("*.parquet")):
            yield pl.scan_parquet(path)

    def each_bucket(self, name: str) -> Iterator[pl.LazyFrame]:
        for folder in sorted((self.root / name).glob("bucket=*")):
            yield pl.scan_parquet(sorted(folder.glob("*.parquet")))


def scan_into(tables: Tables, step: Step, batch: Batch, encoded_rows: pl.DataFrame | None = None) -> None:
    """Scan a batch and store its tables (and the output rows encoded for it, if any) as the part
    named by its first position: the same wherever the scan runs (this process, a scan worker, a
    Ray actor), so reduce and the write phase find the same parts."""
    part = f"{batch.start:012d}"
    for name, frame in step.scan(batch).items():
        tables.write(name, frame, part)
    if encoded_rows is not None:
        tables.write(ENCODED_ROWS, encoded_rows, part)


def write_part(frame: pl.DataFrame, path: Path) -> None:
    """A table's part, uncompressed: these files live for one run, and what a scan stores (hashes,
    signatures, encoded rows and texts of varied words) shrinks little. Measured on dedupe's
    benchmark records (Intel Xeon with AMX, 2 cores): lz4 saved a quarter of the bytes of the
    encoded rows and texts, and cost 2.6 us of a scan's 47 us of CPU a record, plus reading back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    frame.write_parquet(tmp, compression="uncompressed")
    tmp.replace(path)


# --- reading and writing ---------------------------------------------------------------


Source = str | Path | list[dict[str, Any]]


def read_batches(
    source: Source,
    from_format: str | None,
    read_options: ReadOptions | None,
    size: int = BATCH_SIZE,
    not_records: dict[str, int] | None = None,
) -> tuple[str, Iterator[Batch]]:
    """(the input's format, its records in batches); a bad row stops with its file, line and reason.
    Rows that hold no record (skipped by policy, used in others) are counted in ``not_records``."""
    if isinstance(source, list):
        return "canonical", (Batch(source[i : i + size], i) for i in range(0, max(len(source), 1), size))
    from datakit.convert import open_records

    fmt, _, outcomes = open_records(source, from_format, read_options)

    def batches() -> Iterator[Batch]:
        records: list[dict[str, Any]] = []
        locations: list[dict[str, Any]] = []
        start = 0
        for record, location in records_of(outcomes, not_records):
            records.append(record)
            locations.append(location)
            if len(records) >= size:
                yield Batch(records, start, locations)
                start += len(records)
                records, locations = [], []
        if records or start == 0:
            yield Batch(records, start, locations)

    return fmt, batches()


def records_of(outcomes: Iterator, not_records: dict[str, int] | None) -> Iterator[tuple[dict[str, Any], dict]]:
    """(record, where its row came from) for each record a reader made; a bad row stops with its
    file, line and reason. Rows that hold no record are counted in ``not_records``."""
    for outcome in outcomes:
        if isinstance(outcome, Read):  # (nearly every row: asked first)
            yield outcome.record, outcome.row.location()
        elif isinstance(outcome, Rejected):
            hint = "run `datakit convert --on-error skip` first to set bad rows aside"
            raise StepError(f"{outcome.row.where()}: {outcome.reason} ({hint})")
        elif not_records is not None:  # Skipped or Used: a row that holds no record
            reason = outcome.reason if isinstance(outcome, Skipped) else "used inside other records"
            not_records[reason] = not_records.get(reason, 0) + 1


T = TypeVar("T")


def read_ahead(items: Iterator[T]) -> Iterator[T]:
    """The items of ``items``, each made in a background thread while the caller works on the
    one before. Reading and encoding records is Python that holds the GIL; a scan's text passes
    (polars) and signatures (numba) release it, so on two cores the two overlap. Up to two items
    are ahead (one waiting, one made while it waits), so memory grows by up to two batches. An error raised making an item is raised here, at that
    item; a caller that stops (an error, Ctrl-C) stops the thread at its next item."""
    ahead: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    end = object()

    def put(entry: tuple[Any, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                ahead.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as exc:  # handed to the caller, who raises it
            put((end, exc))
        finally:
            getattr(items, "close", lambda: None)()  # a generator's files close in the thread that ran it

    thread = threading.Thread(target=produce, name="datakit-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ahead.get()
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stop.set()


def cannot_write(record: dict[str, Any], target: str, exc: Exception) -> str:
    return f"record {record.get('id')} cannot be written as {target}: {exc}"


@dataclass(frozen=True)
class RowEncoder:
    """Makes the output rows of records as JSON lines in format ``target`` (as a .jsonl Sink
    writes them), ahead of knowing which records are kept."""

    target: str
    options: formats.WriteOptions

    def __call__(self, records: list[dict[str, Any]]) -> pl.DataFrame:
        """``row``: each record's JSON line, or null and ``error``: why the record cannot be
        written (raised only if the record is kept). The lines go into one buffer, not a bytes
        object each: 3x faster, as an object of a kilobyte held each is a fresh allocation."""
        target, options = formats.get(self.target), self.options
        lines, ends, errors = bytearray(), np.zeros(len(records) + 1, dtype=np.int64), []
        for k, record in enumerate(records, 1):
            try:
                lines += json_line(target.write(record, options))
                errors.append(None)
            except RecordError as exc:
                errors.append(cannot_write(record, self.target, exc))
            ends[k] = len(lines)
        rows = series_of_buffers("row", lines, ends, pl.Binary)
        error = pl.Series("error", errors, dtype=pl.String)
        if error.null_count() < len(error):  # a record that cannot be written has no row
            rows = pl.select(row=pl.when(error.is_null()).then(rows)).to_series()
        return pl.DataFrame([rows, error])


class Sink:
    """The output (a file in any format, or a list in memory) and the side output files."""

    def __init__(self, output: str | Path | None, target: str, side_paths: dict[str, str]):
        self.target = formats.get(target)
        self.options = formats.WriteOptions()
        self.records: list[dict[str, Any]] | None = [] if output is None else None
        self.side_rows: dict[str, list[dict[str, Any]]] = {name: [] for name in side_paths}
        self.writers: list[RowWriter] = []
        self.main = None if output is None else RowWriter(output, self.target.SCHEMA)
        self.side = {}
        if output is not None:
            self.writers.append(self.main)
            for name, path in side_paths.items():
                self.side[name] = RowWriter(path, pl.Schema({}), kind="jsonl")
                self.writers.append(self.side[name])

    def write(self, processed: Processed) -> None:
        for record in processed.records:
            if self.records is not None:
                self.records.append(record)
                continue
            try:
                self.main.write(self.target.write(record, self.options))
            except RecordError as exc:
                raise StepError(self._cannot_write(record, exc)) from None
        for name, rows in processed.side.items():
            if name in self.side:
                for row in rows:
                    self.side[name].write(row)
            elif name in self.side_rows:
                self.side_rows[name].extend(rows)

    def takes_encoded(self) -> bool:
        """Whether the output is JSON lines, which ``encode`` can make ahead of time."""
        return self.main is not None and self.main.kind == "jsonl"

    def encode(self, records: list[dict[str, Any]]) -> pl.DataFrame:
        return self.encoder(records)

    @property
    def encoder(self) -> RowEncoder:
        """What makes the output's JSON lines, to hand to another process (scan workers)."""
        return RowEncoder(self.target.NAME, self.options)

    def write_encoded(self, rows: pl.DataFrame, codes: np.ndarray, reasons: list[str]) -> tuple[int, Counter]:
        """Write the rows ``encode`` made whose code is 0 (see Step.removals): (written, removed
        by reason)."""
        kept = rows.filter(pl.Series(codes == 0))
        for error in kept["error"].drop_nulls():
            raise StepError(error)
        lines, offsets = buffers_of(kept["row"])
        self.main.write_encoded(lines[offsets[0] : offsets[-1]], kept.height)  # the kept lines, joined
        removed = Counter()
        for code, n in zip(*np.unique(codes[codes > 0], return_counts=True), strict=True):
            removed[reasons[code - 1]] = int(n)
        return kept.height, removed

    def _cannot_write(self, record: dict[str, Any], exc: Exception) -> str:
        return cannot_write(record, self.target.NAME, exc)

    def close(self, ok: bool) -> None:
        """Move every file into place (ok) or drop them all (a failure leaves no partial output).
        Every file is finished before any is renamed, so a full disk leaves none of them."""
        done = 0
        try:
            if ok:
                for writer in self.writers:
                    writer.finish()
                for writer in self.writers:
                    writer.commit()
                    done += 1
        finally:
            for writer in self.writers[done:] if ok else self.writers:
                writer.abort()


# --- running a step ----------------------------------------------------------------------


@dataclass
class Result:
    report: Report
    records: list[dict[str, Any]] | None = None  # the output, when it was kept in memory
    side: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # side rows, in memory


class LocalExecutor:
    """Runs a step on this machine: batches stream from the input, a global step's tables go
    to a temporary folder on disk, and only ``reduce`` holds more than a batch. While a global
    step scans one batch, a thread reads (and encodes) the next (read_ahead); a large JSON-lines
    file is scanned by worker processes instead, one per core (datakit.scan_workers), where the
    step allows it.

    ``workers``: how many scan processes (1: none, this process scans); by default one per core
    (at most 8; a container's CPU quota counts) for files of WORKERS_FROM_BYTES or
    more. ``block_bytes``: the input each takes at a time."""

    name = "local"

    def __init__(self, workdir: str | Path | None = None, batch_size: int = BATCH_SIZE,
                 workers: int | None = None, block_bytes: int | None = None):  # fmt: skip
        self.workdir = workdir
        self.batch_size = batch_size
        self.workers = workers
        self.block_bytes = block_bytes

    def scan_worker_count(self, step: Step, source: Source, input_format: str) -> int:
        """How many worker processes scan this input: 1 (none) unless the input is a JSON-lines
        file whose rows convert on their own, and the step allows it and a fresh interpreter can
        import it (not one defined in a script or notebook)."""
        if self.workers == 1 or isinstance(source, list) or str(source) == "-" or not step.allows_scan_workers():
            return 1
        if file_kind(source)[0] != "jsonl" or not formats.get(input_format).ROW_LOCAL or not importable(type(step)):
            return 1
        from datakit.scan_workers import python_executable

        if not python_executable():  # an embedded interpreter: no python to start
            return 1
        if self.workers is not None:
            return self.workers
        # a worker takes a second or two to start (imports, compiled kernels): not worth it for less;
        # each holds a block and its records (about 0.5 GB), hence a ceiling however many cores
        return default_workers() if os.path.getsize(source) >= WORKERS_FROM_BYTES else 1

    def execute(self, step: Step, source: Source, sink: Sink, report: Report, from_format, read_options) -> None:
        with few_gc_passes():  # batches of records are held (and made) by the thousand
            self._execute(step, source, sink, report, from_format, read_options)

    def _execute(self, step: Step, source: Source, sink: Sink, report: Report, from_format, read_options) -> None:
        if not step.is_global():
            self._process(step, source, sink, report, from_format, read_options)
            return
        tmp = scratch(self.workdir, f"{step.name}-tables-", folder=True)
        try:
            tables = Tables(tmp, step.shuffle)
            # A step that only removes records (dedupe) gets its output from this one pass: each
            # row is encoded here, kept beside the step's tables, and copied out if reduce keeps it.
            encoded = step.only_removes() and sink.takes_encoded()
            not_records = report.rows_not_records if encoded else None
            workers = self.scan_worker_count(step, source, from_format)
            if workers > 1:
                from datakit.scan_workers import BLOCK_BYTES, Setup, run_scan

                setup = Setup(type(step), step.config, step.paths, str(tmp), tables.buckets, str(source), from_format,
                              read_options or ReadOptions(), sink.encoder if encoded else None, self.batch_size)  # fmt: skip
                with report.phase("scan"):
                    run_scan(setup, workers, self.block_bytes or BLOCK_BYTES, not_records)
                step.notes.append(f"scanned by {workers} worker processes")
            else:
                _, batches = read_batches(source, from_format, read_options, self.batch_size, not_records)
                # the next batch is read (and encoded) in a thread while this one is scanned
                read = read_ahead((batch, sink.encode(batch.records) if encoded else None) for batch in batches)
                with closing(read), report.phase("scan"):  # reading the input is part of it
                    for batch, rows in read:
                        scan_into(tables, step, batch, rows)
            with report.phase("reduce"):
                step.reduce(tables)
            if encoded:
                parts = sorted((tmp / ENCODED_ROWS).glob("*.parquet"))
                # the next part is read (often from disk: a large run's parts outgrow the page
                # cache) while this one is written
                read = read_ahead((path, pl.read_parquet(path)) for path in parts)
                with closing(read), report.phase("write"):
                    for path, rows in read:
                        codes, reasons = step.removals(int(path.stem), rows.height)
                        written, removed = sink.write_encoded(rows, codes, reasons)
                        report.read += rows.height
                        report.add(Processed(removed=removed))
                        report.written += written
                return
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._process(step, source, sink, report, from_format, read_options)

    def _process(self, step: Step, source: Source, sink: Sink, report: Report, from_format, read_options) -> None:
        _, batches = read_batches(source, from_format, read_options, self.batch_size, report.rows_not_records)
        with report.phase("process"):
            for batch in batches:
                report.read += len(batch)
                processed = step.process(batch)
                report.add(processed)
                sink.write(processed)


def run(
    step: str | type[Step],
    input: Source,
    output: str | Path | None = None,
    *,
    to: str | None = None,
    from_format: str | None = None,
    read_options: ReadOptions | None = None,
    side_paths: dict[str, str | None] | None = None,
    executor: Any = None,
    config: StepConfig | None = None,
    resources: dict[str, Any] | None = None,
    **options: Any,
) -> Result:
    """Run a step on a file (``output`` a path) or on records in memory (``input`` a list,
    ``output`` None: the records and side rows come back in the Result).

        run("dedupe", "in.jsonl", "out.jsonl", method="minhash")
        run("filter", records, rules=("length",)).records

    ``options`` are the step's settings (the recipe keys); ``config`` passes them built.
    ``side_paths`` overrides where side outputs go (default OUTPUT + their suffix).
    """
    cls = get(step) if isinstance(step, str) else step
    config = config if config is not None else cls.Config.from_mapping(options)
    if str(input) == "-":  # standard input: saved first, since a global step reads its input twice
        spooled = spool_stdin(getattr(executor, "workdir", None))
        try:
            result = run(cls, spooled, output, to=to, from_format=from_format, read_options=read_options,
                         side_paths=side_paths, executor=executor, config=config, resources=resources)  # fmt: skip
        finally:
            spooled.unlink(missing_ok=True)
        result.report.input = "-"
        return result
    started = time.perf_counter()
    chosen = dict(side_paths or {})
    paths = {
        name: str(chosen.get(name) or f"{output}{side.suffix}") for name, side in cls.side_outputs.items()
    } if output is not None else {name: "" for name in cls.side_outputs}  # fmt: skip
    if output is not None:
        refuse_overwrite([] if isinstance(input, list) else [input], [str(output), *paths.values()])
    # A file a step writes itself (select's plot) is staged under a temporary name and moved into
    # place only when the whole run succeeds: a failed run leaves no finished-looking side file.
    staged = {n: _staging_name(p) for n, p in paths.items() if p and n not in _row_sides(cls)}
    instance = cls(config, {**paths, **{n: str(p) for n, p in staged.items()}}, **(resources or {}))
    input_format = "canonical" if isinstance(input, list) else (from_format or _peek_format(input, read_options))
    target = to or instance.target_format(input_format)
    name_in = "<records>" if isinstance(input, list) else str(input)
    report = Report(cls.name, name_in, str(output) if output is not None else "<records>", config.to_dict())
    report.side_outputs = {n: p for n, p in paths.items() if p and n in _row_sides(cls)}
    sink = Sink(output, target, {n: p for n, p in paths.items() if n in _row_sides(cls)})
    ok = False
    try:
        (executor or LocalExecutor()).execute(instance, input, sink, report, input_format, read_options)
        with report.phase("finish"):
            finished = instance.finish()
            report.add(finished)
            sink.write(finished)
        ok = True
    finally:
        sink.close(ok)
        for name, path in staged.items():
            if ok and path.exists():
                os.replace(path, paths[name])
            path.unlink(missing_ok=True)
    report.consumed = instance.consumed(report.read)
    report.notes = instance.notes
    report.figures.update(instance.figures)
    report.stopped = instance.stopped
    report.side_outputs.update({n: p for n, p in paths.items() if p and n not in _row_sides(cls) and Path(p).exists()})
    report.seconds = time.perf_counter() - started
    report.check()
    return Result(report, sink.records, sink.side_rows)


def importable(cls: type) -> bool:
    """Whether a fresh interpreter finds ``cls`` by its module and name (pickle's way)."""
    import importlib

    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        return False
    try:
        found: Any = importlib.import_module(cls.__module__)
        for name in cls.__qualname__.split("."):
            found = getattr(found, name, None)
    except Exception:  # (a module that fails to import here fails there too)
        return False
    return found is cls


def _staging_name(path: str) -> Path:
    """A temporary name beside ``path`` for a file a step writes (free: the step creates it)."""
    staged = scratch(Path(path).parent, f".{Path(path).name}.", Path(path).suffix)
    staged.unlink()
    return staged


def _row_sides(cls: type[Step]) -> set[str]:
    return {name for name, side in cls.side_outputs.items() if side.rows}


def _peek_format(path: str | Path, read_options: ReadOptions | None) -> str:
    from datakit.convert import open_records

    fmt, _, _ = open_records(path, None, read_options)
    return fmt
