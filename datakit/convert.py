"""Format conversion: any supported input -> canonical records -> any supported output.

    from datakit import convert
    summary = convert("alpaca.json", "chat.jsonl", to="sharegpt")
    print(summary.text())

Every input row is accounted for: it becomes one or more records (or, for an
OpenAssistant message table, part of other rows' records), is rejected with a reason,
or is skipped by a documented policy. Every record read is written or rejected on
write. ``Summary.check()`` asserts both equalities.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from datakit import formats
from datakit.errors import DatakitError
from datakit.formats import Read, ReadOptions, Rejected, Skipped, Used, WriteOptions
from datakit.hardware import default_workers
from datakit.io import (
    AtomicFile,
    RowWriter,
    SourceRow,
    block_rows,
    file_kind,
    line_blocks,
    read_rows,
    refuse_overwrite,
    scratch,
)
from datakit.record import RecordError, few_gc_passes

DETECT_SAMPLE = 200
CHUNK_LINES = 5_000  # rows per batch on the serial path
CHUNK_BYTES = 4 << 20  # JSONL bytes per job on the parallel path
REJECTS_SCHEMA = pl.Schema(
    {"stage": pl.String, "file": pl.String, "line": pl.Int64, "index": pl.Int64, "reason": pl.String}
)


class ConversionError(DatakitError, ValueError):
    """A bad row met with ``on_error="fail"``: the message names the file, line and reason."""


@dataclass
class Summary:
    input: str
    output: str
    source_format: str
    target_format: str
    detected: str | None = None
    rows_read: int = 0
    rows_converted: int = 0  # gave one or more records
    rows_rejected: int = 0
    rows_skipped: int = 0  # left out by a documented policy
    records_read: int = 0
    written: int = 0
    rejected_on_write: int = 0
    rejects_path: str | None = None
    reasons: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def check(self) -> None:
        assert self.rows_read == self.rows_converted + self.rows_rejected + self.rows_skipped, self
        assert self.records_read == self.written + self.rejected_on_write, self

    def text(self) -> str:
        rate = self.rows_read / self.seconds if self.seconds else 0.0
        lines = [
            f"{self.input} ({self.source_format}) -> {self.output} ({self.target_format})",
            f"rows: read {self.rows_read} = converted {self.rows_converted} + rejected {self.rows_rejected}"
            f" + skipped {self.rows_skipped}",
            f"records: {self.records_read} = written {self.written} + rejected on write {self.rejected_on_write}",
            f"time: {self.seconds:.2f}s ({rate:,.0f} rows/s)",
        ]
        if self.detected:
            lines.insert(1, self.detected)
        for reason, n in self.reasons.most_common(10):
            lines.append(f"  {n:>8}  {reason}")
        if len(self.reasons) > 10:
            lines.append(f"  ... {len(self.reasons) - 10} more reasons")
        for note, n in sorted(self.notes.items()):
            lines.append(f"  {n:>8}  {note}")
        if self.rejects_path:
            lines.append(f"rejects: {self.rejects_path}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_records(
    path: str | Path,
    from_format: str | None = None,
    options: ReadOptions | None = None,
) -> tuple[str, str | None, Iterator]:
    """(format, detection note, outcomes) for an input file; outcomes are Read/Used/Rejected/Skipped."""
    options = options or ReadOptions()
    rows = read_rows(path)
    detected = None
    if from_format is None:
        sample = list(itertools.islice(rows, DETECT_SAMPLE))
        from_format, detected = formats.detect([r.data for r in sample if r.data is not None], str(path))
        rows = itertools.chain(sample, rows)
    reader = formats.get(from_format)
    return from_format, detected, reader.read(rows, options)


def read_records(
    path: str | Path, from_format: str | None = None, options: ReadOptions | None = None
) -> Iterator[dict[str, Any]]:
    """The canonical records of a file (any supported format); bad rows raise ConversionError."""
    _, _, outcomes = open_records(path, from_format, options)
    for outcome in outcomes:
        if isinstance(outcome, Rejected):
            raise ConversionError(f"{outcome.row.where()}: {outcome.reason}")
        if isinstance(outcome, Read):
            yield outcome.record


def write_records(
    records: Iterable[dict[str, Any]], path: str | Path, to: str = "canonical", lossy: bool = False
) -> int:
    """Write canonical records as format ``to`` (atomically); returns how many were written."""
    target = formats.get(to)
    options = WriteOptions(lossy=lossy)
    with RowWriter(path, target.SCHEMA) as writer:
        for record in records:
            writer.write(target.write(record, options))
        return writer.count


@dataclass
class _Chunk:
    """What converting a run of outcomes produced: rows to write, rejects, and the tallies."""

    rows: list[Any] = field(default_factory=list)  # output rows (dicts, or encoded JSON bytes)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    error: str | None = None  # the first bad row, when on_error == "fail"
    last_row: tuple[str, int] | None = None  # a row's records arrive together; count the row once
    part: str | None = None  # a file of encoded JSON rows written by a worker process
    fraction_done: float | None = None  # share of the input read so far, where known


def _convert_outcomes(
    outcomes: Iterable[Any],
    to: str,
    write_options: WriteOptions,
    on_error: str,
    last_row: tuple[str, int] | None = None,
    encode: bool = False,
) -> _Chunk:
    """Write each record as format ``to`` and account for every row; stops at the first error if failing."""
    target = formats.get(to)
    chunk = _Chunk(last_row=last_row)
    counts = chunk.counts

    def reject(stage: str, row: SourceRow, reason: str, record: Any) -> None:
        chunk.reasons[f"{stage}: {reason}" if len(reason) < 120 else f"{stage}: {reason[:117]}..."] += 1
        if on_error == "fail":
            chunk.error = f"{row.where()}: {reason}"
        else:
            try:
                orjson.dumps(record)
            except (orjson.JSONEncodeError, TypeError):  # deeper than JSON writers go: keep the text
                record = row.raw if row.raw is not None else repr(record)[:10_000]
            chunk.rejects.append({"stage": stage, **row.location(), "reason": reason, "record": record})

    for outcome in outcomes:
        if isinstance(outcome, Read):
            key = (outcome.row.file, outcome.row.index)
            if key != chunk.last_row:
                chunk.last_row = key
                counts["rows_read"] += 1
                counts["rows_converted"] += 1
            counts["records_read"] += 1
            try:
                row = target.write(outcome.record, write_options)
            except RecordError as exc:
                counts["rejected_on_write"] += 1
                reject("write", outcome.row, f"cannot be written as {to}: {exc}", outcome.record)
            else:
                chunk.rows.append(orjson.dumps(row) if encode else row)
                counts["written"] += 1
        elif isinstance(outcome, Used):
            counts["rows_read"] += 1
            counts["rows_converted"] += 1
        elif isinstance(outcome, Skipped):
            counts["rows_read"] += 1
            counts["rows_skipped"] += 1
            chunk.notes[f"skipped: {outcome.reason}"] += 1
        elif isinstance(outcome, Rejected):
            counts["rows_read"] += 1
            counts["rows_rejected"] += 1
            row = outcome.row
            reject("read", row, outcome.reason, row.data if row.data is not None else row.raw)
        if chunk.error:
            break
    return chunk


def _convert_lines(job: tuple) -> _Chunk:
    """A worker's share: parse a block of JSONL lines, read and write them.

    With a ``part_dir`` the rows are written there as JSON lines (``chunk.part``) rather than
    sent back, which saves copying them between processes.
    """
    block, first_line, file, from_format, to, read_options, write_options, on_error, part_dir = job
    read_options = replace(read_options, notes=Counter())
    write_options = replace(write_options, notes=Counter())
    outcomes = formats.get(from_format).read(block_rows(file, block, first_line), read_options)
    with few_gc_passes():
        chunk = _convert_outcomes(outcomes, to, write_options, on_error, encode=part_dir is not None)
    if part_dir is not None and chunk.rows:
        chunk.part = os.path.join(part_dir, f"{first_line}.part")
        with open(chunk.part, "wb") as f:
            f.write(b"\n".join(chunk.rows))
        chunk.rows = []
    chunk.notes.update(read_options.notes)
    chunk.notes.update(write_options.notes)
    if isinstance(block, tuple):
        chunk.fraction_done = block[1] / os.path.getsize(file)
    return chunk


def _worker_signals() -> None:
    """Workers leave Ctrl-C to the main process (a terminal sends it to the whole process
    group), which then stops them all at once with ``pool.terminate()``, whose SIGTERM must
    end them at once rather than run the main process's handler."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def convert_file(
    input: str | Path,
    output: str | Path,
    to: str,
    from_format: str | None = None,
    *,
    on_error: str = "fail",
    rejects: str | Path | None = None,
    lossy: bool = False,
    read_options: ReadOptions | None = None,
    progress: bool = False,
    workers: int | None = None,
) -> Summary:
    """Convert ``input`` to format ``to`` at ``output``; see the module docstring.

    ``workers`` processes share the work when the input is a JSONL file whose rows convert
    independently (every format but the OpenAssistant message table); default: one per CPU.
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', not {on_error!r}")
    read_options = read_options or ReadOptions()
    write_options = WriteOptions(lossy=lossy, alpaca_separator=read_options.alpaca_separator)
    target = formats.get(to)
    if rejects is None and on_error == "skip" and str(output) != "-":
        rejects = f"{output}.rejects.jsonl"
    refuse_overwrite([input], [output, rejects])
    from_format, detected, outcomes = open_records(input, from_format, read_options)
    summary = Summary(str(input), str(output), from_format, to, detected)
    if on_error == "skip":
        if rejects is None:
            if str(output) == "-":
                raise ValueError("with on_error='skip' and output '-', name a rejects file")
            rejects = f"{output}.rejects.jsonl"
        summary.rejects_path = str(rejects)
    workers = default_workers() if workers is None else workers
    parallel = (
        workers > 1 and str(input) != "-" and file_kind(input)[0] == "jsonl" and formats.get(from_format).ROW_LOCAL
    )

    started = time.perf_counter()
    meter = _Progress(progress)
    writer = RowWriter(output, target.SCHEMA)
    reject_writer = RowWriter(rejects, REJECTS_SCHEMA, kind="jsonl") if rejects else None
    pool = part_dir = None
    try:
        if parallel:
            outcomes.close()  # the workers read the file themselves
            part_dir = (
                str(scratch(writer.directory, f".{Path(output).name}.", ".parts", folder=True))
                if writer.is_json
                else None
            )
            jobs = (
                (block, first, str(input), from_format, to, read_options, write_options, on_error, part_dir)
                for block, first in line_blocks(str(input), CHUNK_BYTES)
            )
            # SIGTERM stays blocked while the workers start, until each has its own handler: one
            # that came earlier would run the main process's handler in a worker and hang it
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            try:
                pool = multiprocessing.get_context("fork").Pool(workers, initializer=_worker_signals)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            chunks = pool.imap(_convert_lines, jobs)
        else:
            chunks = _serial_chunks(outcomes, to, write_options, on_error)
        for chunk in chunks:
            for row in chunk.rows:
                writer.write(row)
            if chunk.part:
                writer.append_encoded(chunk.part, chunk.counts["written"])
                os.unlink(chunk.part)
            for reject in chunk.rejects:
                reject_writer.write(reject)
            for key, n in chunk.counts.items():
                setattr(summary, key, getattr(summary, key) + n)
            summary.reasons.update(chunk.reasons)
            summary.notes.update(chunk.notes)
            if chunk.error:
                raise ConversionError(chunk.error)
            meter.update(summary.rows_read, chunk.fraction_done)
        writer.close()
        if reject_writer:
            reject_writer.close()
    except BaseException:
        writer.abort()
        if reject_writer:
            reject_writer.abort()
        raise
    finally:
        if pool is not None:
            pool.terminate()
        if part_dir is not None:
            shutil.rmtree(part_dir, ignore_errors=True)
        meter.done()
    summary.notes.update(read_options.notes)
    summary.notes.update(write_options.notes)
    summary.seconds = time.perf_counter() - started
    summary.check()
    return summary


def _serial_chunks(outcomes: Iterator, to: str, write_options: WriteOptions, on_error: str) -> Iterator[_Chunk]:
    last_row = None
    while True:
        with few_gc_passes():
            batch = list(itertools.islice(outcomes, CHUNK_LINES))
            if not batch:
                return
            chunk = _convert_outcomes(batch, to, write_options, on_error, last_row)
        last_row = chunk.last_row
        yield chunk


convert = convert_file  # the short name the package exports


class _Progress:
    """Rows, rows/s and (when the share done is known) an ETA on stderr, every two seconds at most."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.start = self.last = time.perf_counter()
        self.shown = False

    def update(self, rows: int, fraction: float | None = None) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self.last >= 2.0:
            self.last = now
            elapsed = now - self.start
            line = f"\r{rows:,} rows  {rows / elapsed:,.0f} rows/s"
            if fraction:
                line += f"  {fraction:.0%}  ETA {elapsed * (1 - fraction) / fraction:,.0f}s"
            print(line, end="", file=_stderr(), flush=True)
            self.shown = True

    def done(self) -> None:
        if self.shown:
            print(file=_stderr())


def _stderr():
    import sys

    return sys.stderr


# --- LLaMA-Factory dataset_info.json --------------------------------------------------

DATASET_INFO_COLUMNS = {
    "alpaca": {
        "columns": {
            "prompt": "instruction",
            "query": "input",
            "response": "output",
            "system": "system",
            "history": "history",
        },
    },
    "sharegpt": {
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "system": "system", "tools": "tools"},
    },
}


def check_dataset_info(info_path: str | Path, to: str) -> None:
    """Before converting: the entry can be written (a known layout; an existing file is a JSON object)."""
    if to not in DATASET_INFO_COLUMNS:
        raise ConversionError(
            f"LLaMA-Factory reads alpaca or sharegpt layouts; there is no dataset_info entry for {to!r}"
        )
    path = Path(info_path)
    if path.exists():
        try:
            value = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise ConversionError(f"{path}: not valid JSON ({exc}); it would be replaced") from None
        if not isinstance(value, dict):
            raise ConversionError(f"{path}: expected a JSON object of dataset entries")


def write_dataset_info(info_path: str | Path, output: str | Path, to: str, name: str | None = None) -> dict[str, Any]:
    """Add (or replace) the entry for ``output`` in a LLaMA-Factory ``dataset_info.json``."""
    check_dataset_info(info_path, to)
    info_path = Path(info_path)
    output = Path(output)
    name = name or output.name.split(".")[0]
    entry = {"file_name": os.path.relpath(output.resolve(), info_path.resolve().parent), **DATASET_INFO_COLUMNS[to]}
    info = orjson.loads(info_path.read_bytes()) if info_path.exists() else {}
    info[name] = entry
    atomic = AtomicFile(info_path)
    atomic.tmp_path.write_bytes(orjson.dumps(info, option=orjson.OPT_INDENT_2) + b"\n")
    atomic.commit()
    return entry
