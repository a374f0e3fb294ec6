"""Reading rows from, and writing rows to, JSON / JSONL / Parquet / CSV / Arrow files.

Every row read carries where it came from (file, line or index), so any later error
can name it. Every write goes to a temporary file first and is renamed into place
only when complete, so a crash never leaves a half-written output that looks whole.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import shutil
import socket
import sys
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
import polars as pl
import pyarrow as pa

from datakit.errors import DatakitError

TABLE_SUFFIXES = (".parquet", ".csv", ".arrow")
SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv", ".arrow")
BATCH_SIZE = 10_000


class InputError(DatakitError, ValueError):
    """A whole input that cannot be read (unknown extension, unparseable JSON array...)."""


@dataclass(slots=True)
class SourceRow:
    """One raw input row and where it came from; ``error`` is set when it did not parse."""

    data: dict[str, Any] | None
    file: str
    index: int  # 0-based position in the file (for JSONL: the line number - 1)
    line: int | None = None  # 1-based line number, for line-oriented files
    error: str | None = None
    raw: str | None = None  # the unparsed text of a bad line

    def where(self) -> str:
        if self.line is not None:
            return f"{self.file}:{self.line}"
        return f"{self.file} record {self.index}"

    def location(self, source_format: str | None = None) -> dict[str, Any]:
        """{"file", "index", "line"} (a line-oriented file's), after "format" when one is given
        (a record's meta["source"])."""
        if source_format is None:
            loc: dict[str, Any] = {"file": self.file, "index": self.index}
        else:
            loc = {"format": source_format, "file": self.file, "index": self.index}
        if self.line is not None:
            loc["line"] = self.line
        return loc


def file_kind(path: str | Path) -> tuple[str, bool]:
    """('jsonl' | 'json' | 'parquet' | 'csv' | 'arrow', gzipped) from the file name."""
    name = str(path).lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            kind = "jsonl" if suffix == ".ndjson" else suffix[1:]
            if gz and kind in ("parquet", "arrow"):
                raise InputError(f"{path}: gzip around {kind} is not supported (it is compressed already)")
            return kind, gz
    raise InputError(f"{path}: unknown file type; use one of {', '.join(SUFFIXES)} (optionally .gz)")


def _open_text(path: str | Path, gz: bool) -> IO[bytes]:
    if str(path) == "-":
        return sys.stdin.buffer
    return gzip.open(path, "rb") if gz else open(path, "rb")


# --- reading --------------------------------------------------------------------------


GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)  # what a damaged or cut .gz raises while read


def damaged_gzip(path: str | Path, exc: Exception) -> InputError:
    return InputError(f"{path}: damaged or truncated gzip data ({exc})")


def read_rows(path: str | Path, kind: str | None = None) -> Iterator[SourceRow]:
    """Yield every row of a file, in order. ``-`` reads JSON or JSONL from stdin.

    A file that cannot be decoded at all (a truncated or damaged gzip, Parquet or Arrow file,
    text that is not UTF-8 in a CSV) is an InputError naming it; a bad row is a row with ``error``.
    """
    try:
        yield from _read_rows(path, kind)
    except GZIP_ERRORS as exc:
        raise damaged_gzip(path, exc) from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (pa.ArrowException, pl.exceptions.PolarsError) as exc:
        raise InputError(f"{path}: cannot be read as {kind or file_kind(path)[0]} ({exc})") from None


def _read_rows(path: str | Path, kind: str | None = None) -> Iterator[SourceRow]:
    name = str(path)
    if name == "-":
        yield from _read_stdin()
        return
    if not Path(name).exists():
        raise InputError(f"{name}: no such file")
    gz = False
    if kind is None:
        kind, gz = file_kind(name)
    if kind == "jsonl":
        with _open_text(name, gz) as f:
            yield from _read_jsonl_lines(f, name)
    elif kind == "json":
        with _open_text(name, gz) as f:
            yield from _read_json_document(f.read(), name)
    elif kind == "parquet":
        yield from _read_parquet(name)
    elif kind == "csv":
        yield from _read_csv(name, gz)
    elif kind == "arrow":
        yield from _read_arrow(name)
    else:
        raise InputError(f"{name}: unknown file type {kind!r}")


def _read_stdin() -> Iterator[SourceRow]:
    data = sys.stdin.buffer.read()
    if data.lstrip()[:1] == b"[":
        yield from _read_json_document(data, "<stdin>")
    else:
        yield from _read_jsonl_lines(io.BytesIO(data), "<stdin>")


def parse_json_line(text: bytes, file: str, index: int, line: int | None) -> SourceRow:
    """One JSON object (a JSONL line); a bad one becomes a row with ``error`` set."""
    text = text.rstrip(b"\r\n")  # the same bytes (and error positions) however the line was split
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raw = text.decode("utf-8", errors="replace")
        return SourceRow(None, file, index, line, error=f"malformed JSON: {exc}", raw=raw)
    if not isinstance(value, dict):
        raw = text.decode("utf-8", errors="replace")
        return SourceRow(None, file, index, line, error=f"expected a JSON object, got {type(value).__name__}", raw=raw)
    return SourceRow(value, file, index, line)


def line_blocks(path: str, size: int) -> Iterator[tuple[bytes | tuple[int, int], int]]:
    """(block, number of its first line) for blocks of whole lines: ``size`` bytes, and then the
    rest of the line they end in (or to the end of the file).

    For a plain file the block is a (start, end) byte range that the worker reads itself,
    which saves sending the data between processes; for gzip it is the bytes.
    """
    kind, gz = file_kind(path)
    opener = gzip.open if gz else open
    # one buffer read into and counted by numpy: the scan's driver only finds blocks and counts
    # lines, on the cores its worker processes use (reading each block into new bytes, copying it
    # to add the end of its last line and counting with bytes.count took 1.5 s of CPU per GB).
    # The newline mask is reused too: a new one each block was fresh memory the kernel zeroed,
    # 37% of the driver's CPU while its workers scanned (perf, Intel Xeon with AMX).
    buffer = bytearray(size)
    view = np.frombuffer(buffer, dtype=np.uint8)
    newlines = np.empty(size, dtype=bool)
    try:
        with opener(path, "rb") as f:
            first, start = 1, 0
            while got := f.readinto(buffer):
                rest = f.readline()  # finish the last line
                end = start + got + len(rest)
                yield (bytes(view[:got]) + rest if gz else (start, end)), first
                first += int(np.count_nonzero(np.equal(view[:got], 10, out=newlines[:got]))) + rest.count(b"\n")
                start = end
    except GZIP_ERRORS as exc:
        raise damaged_gzip(path, exc) from None


def read_block(file: str, block: bytes | tuple[int, int]) -> bytes:
    if isinstance(block, bytes):
        return block
    start, end = block
    with open(file, "rb") as f:
        f.seek(start)
        return f.read(end - start)


def block_rows(file: str, block: bytes | tuple[int, int], first_line: int) -> Iterator[SourceRow]:
    """The rows of one of ``line_blocks``'s blocks, numbered as ``read_rows`` numbers them."""
    data = read_block(file, block)
    # a line at a time, not split into a list: each line's bytes are freed once parsed (and their
    # memory reused), rather than thousands of them held at once (a quarter faster)
    start, line = 0, first_line
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        text = data[start:end]
        if text.strip():  # blank lines hold no record
            yield parse_json_line(text, file, line - 1, line)
        start, line = end + 1, line + 1


def _read_jsonl_lines(f: IO[bytes], file: str) -> Iterator[SourceRow]:
    for line_no, text in enumerate(f, start=1):
        if text.strip():  # blank lines hold no record
            yield parse_json_line(text, file, line_no - 1, line_no)


def _read_json_document(data: bytes, file: str) -> Iterator[SourceRow]:
    """A JSON array of objects, or a single object. JSONL saved as .json is accepted too."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        # Many datasets are JSONL with a .json name: if every line parses, read it so.
        if data.lstrip()[:1] == b"{" and b"\n" in data.strip():
            rows = list(_read_jsonl_lines(io.BytesIO(data), file))
            if not any(r.error for r in rows):
                yield from rows
                return
        raise InputError(f"{file}: not valid JSON ({exc}); a JSON array cannot be read record by record") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise InputError(f"{file}: expected a JSON array of objects, got {type(value).__name__}")
    for index, item in enumerate(value):
        if isinstance(item, dict):
            yield SourceRow(item, file, index)
        else:
            error = f"expected a JSON object, got {type(item).__name__}"
            yield SourceRow(None, file, index, error=error, raw=orjson.dumps(item).decode())


def _read_parquet(file: str) -> Iterator[SourceRow]:
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(file).iter_batches(batch_size=BATCH_SIZE):
        for item in batch.to_pylist():
            yield SourceRow(item, file, index)
            index += 1


def _read_arrow(file: str) -> Iterator[SourceRow]:
    """Arrow IPC, stream or file layout (Hugging Face `datasets` caches use the stream one)."""
    import pyarrow as pa

    with pa.memory_map(file) as source:
        try:
            reader = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            source.seek(0)
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            batches = iter(reader)
        index = 0
        for batch in batches:
            for item in batch.to_pylist():
                yield SourceRow(item, file, index)
                index += 1


def _read_csv(file: str, gz: bool) -> Iterator[SourceRow]:
    """CSV cells are strings ("" for an empty or null cell); nested fields are JSON text,
    which each format parses. Readers treat an empty optional field as absent."""
    csv.field_size_limit(sys.maxsize)
    opener = gzip.open(file, "rt", encoding="utf-8", newline="") if gz else open(file, encoding="utf-8", newline="")
    with opener as f:
        reader = csv.DictReader(f)
        index = 0
        for item in reader:
            line = reader.line_num  # last line of this row (cells may span lines)
            if None in item:
                yield SourceRow(None, file, index, line, error="more cells than header columns", raw=str(item))
            else:
                yield SourceRow(item, file, index, line)
            index += 1


# --- writing --------------------------------------------------------------------------


class OverwriteError(DatakitError, ValueError):
    """An output path that would replace an input or another output of the same command."""


def refuse_overwrite(inputs: list[str | Path], outputs: list[str | Path | None]) -> None:
    """Before any work: no output may resolve to an input or to another output of the same run
    (through links or relative paths too), or be a folder. ``-`` (stdout) and None are skipped."""
    seen: dict[Path, str] = {Path(p).resolve(): "the input" for p in inputs if p is not None and str(p) != "-"}
    for path in outputs:
        if path is None or str(path) in ("", "-"):
            continue
        where = Path(path).resolve()
        if where in seen:
            raise OverwriteError(f"{path}: would overwrite {seen[where]}; choose another path")
        seen[where] = "another output of this command"
        if where.is_dir():  # found now, not when the finished file is renamed onto it
            raise OverwriteError(f"{path}: is a directory, not a file")
        parent = next((p for p in where.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise OverwriteError(f"{path}: {parent} is a file, not a folder")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


_HOST = "".join(c if c.isalnum() else "_" for c in socket.gethostname())


def scratch(directory: str | Path | None, prefix: str, suffix: str = "", folder: bool = False) -> Path:
    """A new temporary file (or folder) in ``directory`` (default: the system's temp folder).

    Its name says which machine and process made it (``PREFIXdatakit-HOST-PID.RANDOM SUFFIX``), so
    that the temporary files a killed run left behind can be told from a running one's: they are
    removed here, before a new one is made, and never pile up.
    """
    directory = Path(directory) if directory else Path(tempfile.gettempdir())
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale(directory, prefix, suffix)
    mark = f"{prefix}datakit-{_HOST}-{os.getpid()}."
    if folder:
        return Path(tempfile.mkdtemp(prefix=mark, suffix=suffix, dir=directory))
    fd, name = tempfile.mkstemp(prefix=mark, suffix=suffix, dir=directory)
    os.close(fd)
    return Path(name)


def remove_stale(directory: Path, prefix: str, suffix: str = "") -> list[Path]:
    """Remove this machine's temporary files of ``scratch(directory, prefix, suffix)`` whose
    process no longer runs; return them."""
    start = f"{prefix}datakit-{_HOST}-"
    removed = []
    try:
        entries = [e for e in directory.iterdir() if e.name.startswith(start) and e.name.endswith(suffix)]
    except OSError:
        return removed
    for entry in entries:
        pid = entry.name[len(start) :].split(".", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def spool_stdin(folder: str | Path | None = None) -> Path:
    """Standard input saved to a temporary file (a step may read its input twice); the caller
    deletes it. The name's extension tells the readers whether it is JSON or JSON lines."""
    data = sys.stdin.buffer.read()
    suffix = ".json" if data.lstrip()[:1] == b"[" else ".jsonl"
    path = scratch(folder, "stdin-", suffix)
    path.write_bytes(data)
    return path


class AtomicFile:
    """A file written under a temporary name and renamed into place on commit."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp_path = scratch(self.path.parent, f".{self.path.name}.", ".tmp")

    def commit(self) -> None:
        with open(self.tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(self.tmp_path, 0o666 & ~_UMASK)  # mkstemp made it 0600; a new file follows the umask
        try:
            os.replace(self.tmp_path, self.path)
        except OSError:
            self.abort()
            raise

    def abort(self) -> None:
        self.tmp_path.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Write a whole text file atomically: readers see the old file or the new one, never half."""
    atomic = AtomicFile(path)
    try:
        atomic.tmp_path.write_text(text, encoding="utf-8")
        atomic.commit()
    except BaseException:
        atomic.abort()
        raise


def write_json(path: str | Path, value: Any, indent: int = 1) -> None:
    """``value`` as JSON, atomically (tuple keys become "a|b", other values their str)."""
    write_text(path, json.dumps(_json_keys(value), indent=indent, default=str))


def _json_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k if isinstance(k, str) else "|".join(map(str, k)) if isinstance(k, tuple) else str(k): _json_keys(v)
                for k, v in value.items()}  # fmt: skip
    if isinstance(value, (list, tuple)):
        return [_json_keys(v) for v in value]
    return value


def _table_value(value: Any) -> Any:
    """Lists and dicts in a String column are stored as JSON text."""
    if isinstance(value, (list, dict)):
        return orjson.dumps(value).decode()
    return value


def conform(row: dict[str, Any], schema: pl.Schema) -> dict[str, Any]:
    """A row shaped for a fixed table schema: schema keys only, free-form JSON as text."""
    out = {}
    for key, dtype in schema.items():
        value = row.get(key)
        out[key] = _table_value(value) if dtype == pl.String else value
    return out


def buffers_of(values: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(the bytes of all the values of a String or Binary series without nulls, int64 offsets:
    value d is bytes [offsets[d], offsets[d + 1])), without a copy per value (Arrow's large layout)."""
    if values.null_count():
        raise ValueError("buffers_of needs values without nulls (fill them first)")
    array = values.rechunk().to_arrow(compat_level=pl.CompatLevel.oldest())  # large_string or large_binary
    _, offsets, data = array.buffers()
    offsets = np.frombuffer(offsets, dtype=np.int64)[array.offset : array.offset + len(array) + 1]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8)
    return data, offsets


def series_of_buffers(name: str, data: Any, offsets: np.ndarray, dtype: pl.DataType) -> pl.Series:
    """A String or Binary series whose value d is bytes [offsets[d], offsets[d + 1]) of ``data``
    (int64 offsets; any bytes-like data): one buffer for all the values, not an object each."""
    kind = pa.large_string() if dtype == pl.String else pa.large_binary()
    buffers = [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    return pl.Series(name, pa.Array.from_buffers(kind, len(offsets) - 1, buffers))


def json_line(row: dict[str, Any]) -> bytes:
    """A row as a JSON line, as RowWriter writes it to a .jsonl file."""
    return orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)


class RowWriter:
    """Writes dict rows to .jsonl/.json/.parquet/.csv (optionally .gz) or ``-`` (stdout), atomically.

    ``schema`` fixes the columns of Parquet and CSV outputs (JSON outputs write rows as given).
    Use as a context manager: the file appears under its name only if the block succeeds.
    """

    def __init__(self, path: str | Path, schema: pl.Schema, kind: str | None = None):
        self.name = str(path)
        self.schema = schema
        self.count = 0
        self._buffer: list[dict[str, Any]] = []
        self._atomic: AtomicFile | None = None
        self._parquet = None
        if self.name == "-":
            self.kind, gz = (kind or "jsonl"), False
            self._stream: IO[bytes] = sys.stdout.buffer
        else:
            self.kind, gz = file_kind(self.name) if kind is None else (kind, False)
            if self.kind == "arrow":
                raise InputError(f"{self.name}: writing Arrow is not supported; use .parquet")
            self._atomic = AtomicFile(self.name)
            if self.kind == "parquet":
                self._stream = open(self._atomic.tmp_path, "wb")
            else:
                raw = open(self._atomic.tmp_path, "wb")
                self._stream = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) if gz else raw
                self._raw = raw
        if self.kind == "json":
            self._stream.write(b"[")
        elif self.kind == "csv":
            self._text = io.TextIOWrapper(self._stream, encoding="utf-8", newline="", write_through=True)
            self._csv = csv.DictWriter(self._text, fieldnames=list(schema.keys()))
            self._csv.writeheader()

    def write_encoded(self, lines: bytes, count: int) -> None:
        """Append ``count`` rows that ``json_line`` made, joined (.jsonl only)."""
        self._stream.write(lines)
        self.count += count

    def write(self, row: dict[str, Any]) -> None:
        if self.kind == "jsonl":
            self._stream.write(json_line(row))
        elif self.kind == "json":
            self._stream.write(b"\n  " if self.count == 0 else b",\n  ")
            self._stream.write(orjson.dumps(row))
        elif self.kind == "csv":
            self._csv.writerow({k: _table_value(row.get(k)) for k in self.schema})
        elif self.kind == "parquet":
            self._buffer.append(conform(row, self.schema))
            if len(self._buffer) >= BATCH_SIZE:
                self._flush_parquet()
        self.count += 1

    @property
    def is_json(self) -> bool:
        return self.kind in ("jsonl", "json")

    @property
    def directory(self) -> str | None:
        return str(self._atomic.path.parent) if self._atomic else None

    def append_encoded(self, part: str | Path, count: int) -> None:
        """Append a file of ``count`` rows already encoded as JSON lines (no final newline)."""
        if self.kind == "json":
            self._stream.write(b"\n  " if self.count == 0 else b",\n  ")
            with open(part, "rb") as f:
                self._stream.write(f.read().replace(b"\n", b",\n  "))  # orjson never emits a raw newline
        else:
            self._stream.flush()
            with open(part, "rb") as f:
                if self._stream is getattr(self, "_raw", None):
                    os.sendfile(self._stream.fileno(), f.fileno(), None, os.path.getsize(part))
                else:
                    shutil.copyfileobj(f, self._stream)
            self._stream.write(b"\n")
        self.count += count

    def _flush_parquet(self) -> None:
        import pyarrow.parquet as pq

        table = pl.DataFrame(self._buffer, schema=self.schema).to_arrow()
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self._stream, table.schema, compression="zstd")
        self._parquet.write_table(table)
        self._buffer = []

    def close(self) -> None:
        """Finish the file and move it into place."""
        self.finish()
        self.commit()

    def finish(self) -> None:
        """Write the file's end and close it (still under its temporary name)."""
        if self.kind == "json":
            self._stream.write(b"\n]\n" if self.count else b"]\n")
        elif self.kind == "csv":
            self._text.detach()
        elif self.kind == "parquet":
            if self._buffer or self._parquet is None:
                self._flush_parquet()
            self._parquet.close()
        if self._atomic is None:
            self._stream.flush()
            return
        self._stream.close()
        if getattr(self, "_raw", None) is not None and self._raw is not self._stream:
            self._raw.close()

    def commit(self) -> None:
        """Move the finished file into place."""
        if self._atomic is not None:
            self._atomic.commit()

    def abort(self) -> None:
        """Drop the temporary file; the output path is left as it was."""
        if self._atomic is None:
            return
        try:
            self._stream.close()
        finally:
            self._atomic.abort()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
