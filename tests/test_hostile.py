"""Hostile input (issue 14): no input destroyed, no record lost, no traceback.

Every command is run the way a user runs it (click's CliRunner in this process, and a few real
processes), on input built to break it, and held to one contract:

- bad input or bad settings: exit status 1 and ONE line on stderr, ``Error: ...``, naming the
  file (and line or record where known) or the option, and the reason. Never a traceback, never
  a bare ``Aborted!``, never a usage screen with status 2 (status 2 means a bug in datakit; a
  test that gets ``bug in datakit`` has found one, and its failure shows the logged traceback);
- success: every input row is written or accounted for, checked by counting the rows of the
  output files (read here with the standard library and pyarrow, not datakit) against the input
  and against the summary a command prints; ``--quiet`` prints nothing;
- failure: no output, no side file (rejects, clusters, plot) and no temporary file is left, and
  an input is never overwritten.

The corpus (``hostile_case_count()`` gives the numbers the README quotes):

- HOSTILE_FILES x FILE_COMMANDS: empty and whitespace-only files, a byte order mark, CRLF, NUL
  bytes, invalid UTF-8, lone surrogate escapes, truncated and corrupt gzip, a JSON array cut in
  the middle, JSON nested 100,000 deep, top-level scalars, a directory, a missing file, an
  unknown extension, broken Parquet/Arrow, Parquet with wrong column types, ragged CSV and CSV
  that is not UTF-8; each through convert (fail and skip), inspect, dedupe (exact, minhash),
  filter and select (random); and standard input (STDIN_CASES);
- SHAPE_RUNS: per reader (canonical, alpaca, sharegpt, openai, p3, oasst) a file of rows whose
  fields hold the wrong JSON type (numbers, booleans, null, lists, objects, empty lists and
  strings), huge and unicode strings (emoji, RTL, combining marks), unknown extra fields and
  top-level scalars, converted to every format and container; values nested deeper than the
  writers go; errors quoting a huge value; OpenAssistant tables with repeated ids, cycles,
  several roots and 3,000-deep chains (OASST_TABLES);
- OPTION_CASES: every numeric option of dedupe, filter and select at -1, 0, NaN, inf, huge,
  non-numbers and empty, empty --rules, --k above the input; one-record inputs; --quiet;
  PATH_CASES: outputs and side files that are the input, each other, a directory, under a file
  or under a missing directory; RECIPE_CASES: broken recipes for ``evals run --dry-run``;
- hypothesis: valid rows of each format, damaged at random places (any JSON type, nesting,
  unicode, size), with stray non-row lines, through convert (every target and container,
  failing and skipping, with and without detection) and through dedupe --method exact and
  filter, HYPOTHESIS_EXAMPLES examples per test (DATAKIT_HOSTILE_EXAMPLES=500 searches deeper);
- three real processes: one error line from the installed ``datakit``, output into a closed
  pipe, and SIGTERM in the middle of a run.

A command that hangs on its worker processes for HANG_SECONDS has them killed and fails its test.
select --method random still embeds every record (for its plot and report), so this module
swaps the embedding model for a hash-based stand-in: no model is loaded here.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datakit.cli import main

HANG_SECONDS = 30
MAX_ERROR_CHARS = 2000  # one line a user can read; an error quoting a huge value is a bug too
HYPOTHESIS_EXAMPLES = int(os.environ.get("DATAKIT_HOSTILE_EXAMPLES", "40"))  # more for a deeper search
WORK: Path  # this module's scratch folder (set by the fixture below)


# --- running a command, and the contract ----------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Bug logs and temporary files of the commands go to folders of this module (so a leftover
    temporary file is seen). The embedding model is the real one, with the usual disk cache."""
    global WORK

    WORK = tmp_path_factory.mktemp("hostile")
    scratch = WORK / "scratch"
    scratch.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DATAKIT_LOG_DIR", str(WORK / "bug-logs"))
        mp.setattr(tempfile, "tempdir", str(scratch))
        yield


@dataclass
class Run:
    args: list[str]
    code: int
    stdout: str
    stderr: str

    def line(self) -> str:
        return self.stderr.strip()


def datakit_cli(*args: Any, stdin: bytes | None = None, cli: Any = None) -> Run:
    """A command run in this process; only SystemExit may leave it (the central handler).

    A watchdog kills the command's worker processes if it hangs on them for HANG_SECONDS, so a
    hang fails its test instead of stalling the suite."""
    argv = [str(a) for a in args]
    done, killed = threading.Event(), []

    def watchdog() -> None:
        if not done.wait(HANG_SECONDS):
            import psutil

            for child in psutil.Process().children(recursive=True):
                killed.append(child.pid)
                child.kill()

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        result = CliRunner().invoke(cli or main, argv, input=stdin)
    finally:
        done.set()
    if killed:
        pytest.fail(f"datakit {' '.join(argv)}: hung {HANG_SECONDS}s waiting for its worker processes {killed}")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        trace = "".join(traceback.format_exception(*result.exc_info)[-8:])
        pytest.fail(f"datakit {' '.join(argv)}: an exception escaped the command handler:\n{trace}")
    return Run(argv, result.exit_code, result.stdout, result.stderr)


def bug_log(stderr: str) -> str:
    """The end of the traceback a 'bug in datakit' message points to."""
    found = re.search(r"traceback is in (\S+)", stderr)
    if not found or not Path(found.group(1)).exists():
        return "(no log file named)"
    lines = Path(found.group(1)).read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(lines[-14:])


def check_contract(run: Run, *, created: tuple[Path, ...] = (), folders: tuple[Path, ...] = ()) -> int:
    """The contract every command meets; returns 0 on success, 1 on a clean failure (exit
    status 1, or 2 for a flag that click cannot parse)."""
    where = "datakit " + " ".join(a if len(a) < 200 else a[:200] + "..." for a in run.args)
    text = run.stdout + run.stderr
    assert "Traceback (most recent call last)" not in text, f"{where}: a traceback\n{text[-3000:]}"
    assert "Aborted!" not in run.stderr, f"{where}: a bare 'Aborted!'\n{run.stderr[-2000:]}"
    if "bug in datakit" in run.stderr:
        pytest.fail(f"{where}: a bug in datakit\n{run.stderr.strip()[:1500]}\n--- log ---\n{bug_log(run.stderr)}")
    assert "Usage:" not in run.stderr, f"{where}: a usage screen instead of one line:\n{run.stderr}"
    assert run.code in (0, 1, 2), f"{where}: exit status {run.code}\n{run.stderr[-2000:]}"  # 2: a flag click rejects
    if run.code in (1, 2):
        lines = run.stderr.rstrip("\n").split("\n")  # (a U+2028 in a quoted value is no line break)
        assert len(lines) == 1 and lines[0].startswith("Error: "), f"{where}: not one 'Error:' line:\n{run.stderr}"
        assert lines[0].count("Error:") == 1, f"{where}: the message repeats itself: {lines[0][:300]}"
        assert len(lines[0]) <= MAX_ERROR_CHARS, f"{where}: a {len(lines[0]):,}-character error line"
        for path in created:
            assert not os.path.lexists(path), f"{where}: failed, but left {path}"
    for folder in folders:  # temporary files are dot-files beside the output
        if folder.is_dir():
            left = sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
            assert not left, f"{where}: left temporary files in {folder}: {left}"
    scratch = Path(tempfile.gettempdir())  # this module's own, empty between commands
    left = sorted(p.name for p in scratch.iterdir() if not p.name.startswith("torchinductor"))  # (torch's cache)
    assert not left, f"{where}: left in the temp folder: {left}"
    return min(run.code, 1)


def names(run: Run, *parts: str) -> None:
    """The error line names each of ``parts`` (a file name, a line, an option)."""
    for part in parts:
        assert part in run.line(), f"datakit {' '.join(run.args)}: the error does not name {part!r}: {run.line()}"


# --- reading outputs without datakit ----------------------------------------------------------


def count_rows(path: Path) -> int:
    """Rows of an output file, read with the standard library (or pyarrow for Parquet)."""
    name = path.name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_metadata(path).num_rows
    raw = path.read_bytes()
    if name.endswith(".gz"):
        raw = gzip.decompress(raw)
        name = name[:-3]
    if name.endswith(".json"):
        value = json.loads(raw)
        assert isinstance(value, list), f"{path}: not a JSON array"
        return len(value)
    if name.endswith(".csv"):
        csv.field_size_limit(sys.maxsize)  # cells hold whole conversations
        return len(list(csv.DictReader(io.StringIO(raw.decode("utf-8"), newline=""))))
    lines = [line for line in raw.decode("utf-8").split("\n") if line.strip(" \t\r")]  # JSON lines end at \n only
    for line in lines:
        json.loads(line)  # every line whole
    return len(lines)


def output_rows(path: Path) -> list[dict]:
    """The rows of an output file as dicts (JSON text in table cells left as text)."""
    name = path.name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raw = path.read_bytes()
    if name.endswith(".gz"):
        raw, name = gzip.decompress(raw), name[:-3]
    text = raw.decode("utf-8")
    if name.endswith(".json"):
        return json.loads(text)
    if name.endswith(".csv"):
        csv.field_size_limit(sys.maxsize)
        return list(csv.DictReader(io.StringIO(text, newline="")))
    return [json.loads(line) for line in text.split("\n") if line.strip(" \t\r")]


def jsonl(path: Path) -> list[dict]:
    lines = path.read_bytes().decode("utf-8").split("\n")
    return [json.loads(line) for line in lines if line.strip(" \t\r")]


CONVERT_ROWS = re.compile(r"^rows: read (\d+) = converted (\d+) \+ rejected (\d+) \+ skipped (\d+)$", re.M)
CONVERT_RECORDS = re.compile(r"^records: (\d+) = written (\d+) \+ rejected on write (\d+)$", re.M)
STEP_RECORDS = re.compile(r"^records: read (\d+)(?: \+ created (\d+))? = written (\d+) \+ removed (\d+)", re.M)


@dataclass
class ConvertCounts:
    read: int
    converted: int
    rejected: int
    skipped: int
    records: int
    written: int
    rejected_on_write: int


def convert_counts(run: Run) -> ConvertCounts:
    rows, records = CONVERT_ROWS.search(run.stderr), CONVERT_RECORDS.search(run.stderr)
    assert rows and records, f"datakit {' '.join(run.args)}: no summary on stderr:\n{run.stderr}"
    counts = ConvertCounts(*map(int, rows.groups()), *map(int, records.groups()))
    assert counts.read == counts.converted + counts.rejected + counts.skipped, run.stderr
    assert counts.records == counts.written + counts.rejected_on_write, run.stderr
    return counts


def check_convert_output(run: Run, output: Path, rejects: Path | None, rows_in: int | None) -> ConvertCounts:
    """A successful convert: its summary adds up, and the files hold what it says."""
    counts = convert_counts(run)
    if rows_in is not None:
        assert counts.read == rows_in, f"{run.args}: read {counts.read} of {rows_in} input rows\n{run.stderr}"
    assert count_rows(output) == counts.written, f"{run.args}: output rows != written\n{run.stderr}"
    if rejects is None:
        assert counts.rejected == counts.rejected_on_write == 0, f"{run.args}: rejects without --on-error skip"
    else:
        rows = jsonl(rejects)
        assert len(rows) == counts.rejected + counts.rejected_on_write, f"{run.args}: rejects file != summary"
        for row in rows:
            assert row["reason"] and len(row["reason"]) <= MAX_ERROR_CHARS
            assert not PYTHON_ERRORS.search(row["reason"]), f"a Python error as a reason: {row['reason']}"
    return counts


PYTHON_ERRORS = re.compile(r"\b(Type|Key|Attribute|Value|Index|Recursion|Overflow|UnicodeDecode|JSONDecode)Error\b")


def step_counts(run: Run, output: Path) -> tuple[int, int, int]:
    """(read, written, removed) of a successful step, checked against its output file."""
    found = STEP_RECORDS.search(run.stderr)
    assert found, f"datakit {' '.join(run.args)}: no summary on stderr:\n{run.stderr}"
    read, created, written, removed = (int(g or 0) for g in found.groups())
    assert read + created == written + removed, run.stderr
    assert count_rows(output) == written, f"{run.args}: output rows != written\n{run.stderr}"
    return read, written, removed


def removed_in_clusters(path: Path) -> int:
    return sum(len(cluster["removed"]) for cluster in jsonl(path))


# --- the hostile files ------------------------------------------------------------------------

GOOD_ROWS = [
    {"instruction": "Name a primary colour.", "input": "", "output": "Blue is a primary colour."},
    {"instruction": "Add 2 and 3.", "input": "", "output": "Two and three make five."},
    {"instruction": "Translate 'cat' into French.", "input": "", "output": "The French word is 'chat'."},
]


def good_line(i: int) -> bytes:
    return json.dumps(GOOD_ROWS[i]).encode()


def jsonl_bytes(rows: list[dict], newline: bytes = b"\n") -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + newline for r in rows)


def between_good_rows(bad: bytes) -> Callable[[Path], Path]:
    """A JSONL file: a good row, the bad line (line 2), a good row."""

    def build(folder: Path) -> Path:
        path = folder / "data.jsonl"
        path.write_bytes(good_line(0) + b"\n" + bad + b"\n" + good_line(1) + b"\n")
        return path

    return build


def file_with(name: str, content: bytes) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(content)
        return path

    return build


def truncated_gzip(folder: Path) -> Path:
    whole = gzip.compress(jsonl_bytes(GOOD_ROWS * 200))
    path = folder / "data.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    return path


def a_directory(name: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        (folder / name).mkdir()
        (folder / name / "part.jsonl").write_bytes(jsonl_bytes(GOOD_ROWS))
        return folder / name

    return build


def parquet_of(columns: dict[str, list]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = folder / "data.parquet"
        pq.write_table(pa.table(columns), path)
        return path

    return build


def truncated_parquet(folder: Path) -> Path:
    path = parquet_of({k: [r[k] for r in GOOD_ROWS] for k in GOOD_ROWS[0]})(folder)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@dataclass(frozen=True)
class Hostile:
    """A hostile input file. ``kind``: "file" (the whole file cannot be read: every command
    fails naming it), "row" (a bad row: failing commands name ``where``, skipping ones reject
    ``bad_rows`` of ``rows``), or "benign" (odd but valid: ``records`` when every command must
    read it whole, None when an error naming the file is fine too)."""

    name: str
    build: Callable[[Path], Path]
    kind: str
    where: str = ""
    rows: int = 3
    bad_rows: int = 0
    records: int | None = None


BOM = b"\xef\xbb\xbf"
HOSTILE_FILES = [
    # whole files that cannot be read
    Hostile("truncated-gzip", truncated_gzip, "file"),
    Hostile("corrupt-gzip", file_with("data.jsonl.gz", b"this is not gzip data at all\n"), "file"),
    Hostile("gzip-around-parquet", file_with("data.parquet.gz", gzip.compress(b"PAR1")), "file"),
    Hostile("json-array-cut", file_with("data.json", b'[{"instruction": "a", "output": "b"},\n {"instruc'), "file"),
    Hostile("json-nested-100k", file_with("data.json", b"[" * 100_000), "file"),
    Hostile("json-top-level-number", file_with("data.json", b"42\n"), "file"),
    Hostile("json-top-level-string", file_with("data.json", b'"just text"\n'), "file"),
    Hostile("json-invalid-utf8", file_with("data.json", b'[{"instruction": "\xff\xfe", "output": "x"}]'), "file"),
    Hostile("directory-named-jsonl", a_directory("data.jsonl"), "file"),
    Hostile("directory", a_directory("data"), "file"),
    Hostile("missing-file", lambda folder: folder / "absent.jsonl", "file"),
    Hostile("unknown-extension", file_with("data.txt", jsonl_bytes(GOOD_ROWS)), "file"),
    Hostile("parquet-that-is-text", file_with("data.parquet", jsonl_bytes(GOOD_ROWS)), "file"),
    Hostile("parquet-truncated", truncated_parquet, "file"),
    Hostile("arrow-garbage", file_with("data.arrow", random.Random(14).randbytes(64)), "file"),
    Hostile("csv-invalid-utf8", file_with("data.csv", b"instruction,input,output\na,,b\n\xff\xfe,,c\n"), "file"),
    # a bad row among good ones
    Hostile("nul-bytes", between_good_rows(b"\x00\x00\x00\x00"), "row", ":2", bad_rows=1),
    Hostile("invalid-utf8", between_good_rows(b'{"instruction": "\xff\xfe", "output": "x"}'), "row", ":2", bad_rows=1),
    Hostile("lone-surrogate", between_good_rows(b'{"instruction": "\\ud800", "output": "x"}'), "row", ":2", bad_rows=1),
    Hostile("line-nested-100k", between_good_rows(b"[" * 100_000), "row", ":2", bad_rows=1),
    Hostile("line-top-level-list", between_good_rows(b"[1, 2, 3]"), "row", ":2", bad_rows=1),
    Hostile("line-top-level-string", between_good_rows(b'"text"'), "row", ":2", bad_rows=1),
    Hostile("line-top-level-null", between_good_rows(b"null"), "row", ":2", bad_rows=1),
    Hostile("line-cut-short", between_good_rows(b'{"instruction": "a", "output": '), "row", ":2", bad_rows=1),
    Hostile("bom-mid-file", between_good_rows(BOM + good_line(2)), "row", ":2", bad_rows=1),
    Hostile(
        "parquet-wrong-types",
        parquet_of({"instruction": [1, 2, 3], "input": [None, None, None], "output": [[1], [2], []]}),
        "row",
        " record 0",
        bad_rows=3,
    ),
    Hostile(
        "csv-ragged-rows",
        file_with("data.csv", b"instruction,input,output\nName a colour.,,Blue.\nshort,row\na,b,c,d\n"),
        "row",
        ":3",
        bad_rows=2,
    ),
    # odd but valid
    Hostile("empty", file_with("data.jsonl", b""), "benign", rows=0),
    Hostile("whitespace-only", file_with("data.jsonl", b"  \n\n\t \n \r\n"), "benign", rows=0),
    Hostile("json-empty-array", file_with("data.json", b"[]"), "benign", rows=0),
    Hostile("gzip-of-nothing", file_with("data.jsonl.gz", gzip.compress(b"")), "benign", rows=0),
    Hostile("csv-header-only", file_with("data.csv", b"instruction,input,output\n"), "benign", rows=0),
    Hostile("bom-at-start", file_with("data.jsonl", BOM + jsonl_bytes(GOOD_ROWS)), "benign"),
    Hostile("crlf", file_with("data.jsonl", jsonl_bytes(GOOD_ROWS, b"\r\n")), "benign", records=3),
    Hostile("no-final-newline", file_with("data.jsonl", jsonl_bytes(GOOD_ROWS).rstrip(b"\n")), "benign", records=3),
    Hostile("blank-lines", file_with("data.jsonl", b"\n\n" + jsonl_bytes(GOOD_ROWS, b"\n \n\n")), "benign", records=3),
    Hostile("gzip", file_with("data.jsonl.gz", gzip.compress(jsonl_bytes(GOOD_ROWS))), "benign", records=3),
    Hostile(
        "unicode",
        file_with(
            "data.jsonl",
            jsonl_bytes(
                [{**r, "output": r["output"] + " \U0001f600 مرحبا e\u0301\u0301 \u202eevil\u202c"} for r in GOOD_ROWS]
            ),
        ),
        "benign",
        records=3,
    ),
]


@dataclass(frozen=True)
class Command:
    """A command over INPUT writing under a folder: its arguments, the files it may create, and
    whether it stops at a bad row ("fail") or sets it aside ("skip")."""

    name: str
    args: Callable[[Path, Path], list[Any]]
    outputs: Callable[[Path], tuple[Path, ...]]
    on_bad_row: str


FILE_COMMANDS = [
    Command(
        "convert",
        lambda i, o: ["convert", i, o / "out.jsonl", "--to", "sharegpt"],
        lambda o: (o / "out.jsonl",),
        "fail",
    ),
    Command(
        "convert-skip",
        lambda i, o: ["convert", i, o / "out.parquet", "--to", "openai", "--from", "alpaca", "--on-error", "skip"],
        lambda o: (o / "out.parquet", o / "out.parquet.rejects.jsonl"),
        "skip",
    ),
    Command("inspect", lambda i, o: ["inspect", i, "--json"], lambda o: (), "skip"),
    Command(
        "dedupe-exact",
        lambda i, o: ["dedupe", i, o / "out.jsonl", "--method", "exact"],
        lambda o: (o / "out.jsonl", o / "out.jsonl.clusters.jsonl"),
        "fail",
    ),
    Command(
        "dedupe-minhash",
        lambda i, o: ["dedupe", i, o / "out.jsonl", "--method", "minhash", "--from", "alpaca"],
        lambda o: (o / "out.jsonl", o / "out.jsonl.clusters.jsonl"),
        "fail",
    ),
    Command(
        "filter",
        lambda i, o: ["filter", i, o / "out.jsonl"],
        lambda o: (o / "out.jsonl", o / "out.jsonl.rejects.jsonl"),
        "fail",
    ),
    Command(
        "select-random",
        lambda i, o: ["select", i, o / "out.jsonl", "--method", "random", "--k", "1"],
        lambda o: (o / "out.jsonl", o / "out.jsonl.png"),
        "fail",
    ),
]


def check_success(command: Command, run: Run, out: Path, rows: int | None, records: int | None) -> None:
    """What a successful run of ``command`` must show: every row and record accounted for."""
    if command.name == "convert":
        counts = check_convert_output(run, out / "out.jsonl", None, rows)
        if records is not None:
            assert counts.written == records, run.stderr
    elif command.name == "convert-skip":
        check_convert_output(run, out / "out.parquet", out / "out.parquet.rejects.jsonl", rows)
    elif command.name == "inspect":
        report = json.loads(run.stdout)
        if rows is not None:
            assert report["rows"] == rows, report
        if records is not None:
            assert report["records"] == records, report
    else:
        read, written, removed = step_counts(run, out / "out.jsonl")
        if records is not None:
            assert read == records, run.stderr
        if command.name.startswith("dedupe"):
            assert removed == removed_in_clusters(out / "out.jsonl.clusters.jsonl"), run.stderr
        elif command.name == "filter":
            assert removed == len(jsonl(out / "out.jsonl.rejects.jsonl")), run.stderr
        elif command.name == "select-random":
            assert written == min(1, read), run.stderr


@pytest.mark.parametrize("command", FILE_COMMANDS, ids=lambda c: c.name)
@pytest.mark.parametrize("case", HOSTILE_FILES, ids=lambda c: c.name)
def test_hostile_file(case: Hostile, command: Command, tmp_path: Path) -> None:
    source_dir, out = tmp_path / "in", tmp_path / "out"
    source_dir.mkdir()
    out.mkdir()
    path = case.build(source_dir)
    before = path.read_bytes() if path.is_file() else None
    run = datakit_cli(*command.args(path, out))
    status = check_contract(run, created=command.outputs(out), folders=(out, source_dir))
    if path.is_file():
        assert path.read_bytes() == before, "the input was changed"
    if case.kind == "file":
        assert status == 1, f"{case.name}: {command.name} succeeded on a file that cannot be read:\n{run.stderr}"
        names(run, path.name)
    elif case.kind == "row":
        if command.on_bad_row == "fail":
            assert status == 1, f"{case.name}: {command.name} went past a bad row:\n{run.stderr}"
            names(run, path.name + case.where)
        else:
            assert status == 0, f"{case.name}: {command.name} must set the bad row aside:\n{run.stderr}"
            check_success(command, run, out, case.rows, None)
            if command.name == "convert-skip":
                assert convert_counts(run).rejected == case.bad_rows, run.stderr
            else:
                assert json.loads(run.stdout)["rejected"] == case.bad_rows, run.stdout
    elif case.records is not None:
        assert status == 0, f"{case.name}: {command.name} failed on a valid file:\n{run.stderr}"
        check_success(command, run, out, case.rows, case.records)
    elif status == 0:
        check_success(command, run, out, case.rows, None)
    else:
        names(run, path.name)


@pytest.mark.parametrize("suffix", [".jsonl", ".one-row.jsonl", ".json", ".csv"])
def test_a_byte_order_mark_is_read_or_named(suffix: str, tmp_path: Path) -> None:
    """Windows editors save UTF-8 with a BOM: read the file, or say that the BOM is the problem
    (not, say, that the file holds no records)."""
    rows = GOOD_ROWS[:1] if suffix == ".one-row.jsonl" else GOOD_ROWS
    if suffix.endswith(".jsonl"):
        body = jsonl_bytes(rows)
    elif suffix == ".json":
        body = json.dumps(GOOD_ROWS).encode()
    else:
        body = b"instruction,input,output\n" + b"".join(
            f"{r['instruction']},,{r['output']}\n".encode() for r in GOOD_ROWS
        )
    path = tmp_path / f"bom{suffix}"
    path.write_bytes(BOM + body)
    for extra in ([], ["--from", "alpaca"]):
        run = datakit_cli("convert", path, tmp_path / "out.jsonl", "--to", "sharegpt", *extra)
        if check_contract(run, created=(tmp_path / "out.jsonl",), folders=(tmp_path,)) == 0:
            assert convert_counts(run).written == len(rows) == count_rows(tmp_path / "out.jsonl")
        else:
            names(run, path.name)
            assert re.search(r"BOM|byte order mark", run.line(), re.I), f"the error hides the BOM: {run.line()}"


# --- odd but legal-looking JSON shapes, per reader ---------------------------------------------

ODD_VALUES: dict[str, Any] = {
    "null": None,
    "zero": 0,
    "negative": -1,
    "float": 1.5,
    "huge-number": 1e308,
    "true": True,
    "false": False,
    "empty-list": [],
    "empty-object": {},
    "empty-string": "",
    "whitespace": " \n\t",
    "numbers": [1, 2],
    "strings": ["a", "b"],
    "object": {"a": 1},
    "nested-lists": [[[]]],
    "objects": [{}],
    "huge-string": "word " * 12_000,  # 60 KB in one field
    "unicode": "\U0001f600 مرحبا بالعالم e\u0301\u0301 \u202eevil\u202c \u200b\ufeff",
}


def canonical_message(role: str, content: str | None, **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, "name": None, "tool_calls": None, "tool_call_id": None, **extra}


SHAPE_BASES: dict[str, dict[str, Any]] = {
    "canonical": {  # its meta holds what the writers read back: odd values there must not break them
        "id": "r1",
        "system": "Be brief.",
        "messages": [
            canonical_message("user", "Hi"),
            canonical_message("assistant", None, tool_calls=[{"id": "c1", "name": "f", "arguments": "{}"}]),
            canonical_message("tool", "42", tool_call_id="c1"),
            canonical_message("assistant", "It is 42."),
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "meta": {
            "id_from": "source",
            "alpaca_input": "Hi",
            "p3": {"layout": "p3", "input_prefix": "\n"},
            "answer_choices": ["a", "b"],
            "weights": {"3": 1},
            "lossy": [],
            "oasst": {"message_tree_id": "t", "messages": [{}, {}, {}, {}]},
            "rejected": "No.",
        },
    },
    "alpaca": {
        "instruction": "Name a colour.",
        "input": "A warm one.",
        "output": "Red.",
        "system": "Be brief.",
        "history": [["Hi", "Hello."]],
    },
    "sharegpt": {
        "conversations": [
            {"from": "human", "value": "Hi"},
            {"from": "function_call", "value": '{"name": "f", "arguments": {"x": 1}}'},
            {"from": "observation", "value": "42"},
            {"from": "gpt", "value": "It is 42."},
        ],
        "system": "Be brief.",
        "tools": '[{"name": "f", "parameters": {}}]',
    },
    "openai": {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            {"role": "assistant", "content": "It is 42.", "weight": 1},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    },
    "p3": {
        "inputs_pretokenized": "\nQuestion: what is 6 x 7?",
        "targets_pretokenized": " 42\n",
        "answer_choices": ["42", "41"],
        "is_correct": True,
        "idx": [0, 1],
    },
    "oasst": {
        "message_tree_id": "t1",
        "prompt": {
            "message_id": "m1",
            "role": "prompter",
            "text": "Hi",
            "lang": "en",
            "replies": [
                {
                    "message_id": "m2",
                    "role": "assistant",
                    "text": "Hello.",
                    "rank": 0,
                    "replies": [
                        {
                            "message_id": "m3",
                            "role": "prompter",
                            "text": "More?",
                            "replies": [{"message_id": "m4", "role": "assistant", "text": "Yes.", "rank": 0}],
                        }
                    ],
                },
                {"message_id": "m5", "role": "assistant", "text": "Hey.", "rank": 1},
            ],
        },
    },
}

SHAPE_PATHS: dict[str, list[tuple]] = {
    "canonical": [
        ("id",),
        ("system",),
        ("messages",),
        ("messages", 0),
        ("messages", 0, "role"),
        ("messages", 0, "content"),
        ("messages", 0, "name"),
        ("messages", 1, "tool_calls"),
        ("messages", 1, "tool_calls", 0),
        ("messages", 1, "tool_calls", 0, "name"),
        ("messages", 1, "tool_calls", 0, "arguments"),
        ("messages", 2, "tool_call_id"),
        ("tools",),
        ("meta",),
        ("meta", "id_from"),
        ("meta", "alpaca_input"),
        ("meta", "p3"),
        ("meta", "p3", "input_prefix"),
        ("meta", "p3", "layout"),
        ("meta", "answer_choices"),
        ("meta", "weights"),
        ("meta", "weights", "3"),
        ("meta", "lossy"),
        ("meta", "oasst"),
        ("meta", "oasst", "messages"),
        ("meta", "oasst", "messages", 0),
        ("meta", "oasst", "message_tree_id"),
    ],
    "alpaca": [("instruction",), ("input",), ("output",), ("system",), ("history",), ("history", 0), ("history", 0, 1)],
    "sharegpt": [
        ("conversations",),
        ("conversations", 0),
        ("conversations", 0, "from"),
        ("conversations", 0, "value"),
        ("conversations", 1, "value"),
        ("conversations", 3, "value"),
        ("system",),
        ("tools",),
    ],
    "openai": [
        ("messages",),
        ("messages", 1),
        ("messages", 1, "role"),
        ("messages", 1, "content"),
        ("messages", 1, "content", 0),
        ("messages", 1, "content", 0, "type"),
        ("messages", 1, "content", 0, "text"),
        ("messages", 1, "name"),
        ("messages", 2, "tool_calls"),
        ("messages", 2, "tool_calls", 0),
        ("messages", 2, "tool_calls", 0, "id"),
        ("messages", 2, "tool_calls", 0, "function"),
        ("messages", 2, "tool_calls", 0, "function", "name"),
        ("messages", 2, "tool_calls", 0, "function", "arguments"),
        ("messages", 3, "tool_call_id"),
        ("messages", 4, "weight"),
        ("tools",),
    ],
    "p3": [("inputs_pretokenized",), ("targets_pretokenized",), ("answer_choices",), ("is_correct",), ("idx",)],
    "oasst": [
        ("message_tree_id",),
        ("prompt",),
        ("prompt", "message_id"),
        ("prompt", "role"),
        ("prompt", "text"),
        ("prompt", "lang"),
        ("prompt", "replies"),
        ("prompt", "replies", 0),
        ("prompt", "replies", 0, "message_id"),
        ("prompt", "replies", 0, "role"),
        ("prompt", "replies", 0, "rank"),
        ("prompt", "replies", 0, "deleted"),
        ("prompt", "replies", 0, "synthetic"),
        ("prompt", "replies", 0, "review_result"),
        ("prompt", "replies", 0, "replies"),
        ("prompt", "replies", 0, "replies", 0, "replies", 0, "text"),
    ],
}

TOP_LEVEL_LINES = [b"42", b'"a string"', b"null", b"true", b"[]", b'[{"instruction": "x", "output": "y"}]']


def replaced(row: Any, path: tuple, value: Any) -> Any:
    """A deep copy of ``row`` with the value at ``path`` replaced."""
    row = json.loads(json.dumps(row))
    target = row
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return row


def every_string(value: Any, text: str) -> Any:
    if isinstance(value, str):
        return text
    if isinstance(value, list):
        return [every_string(v, text) for v in value]
    if isinstance(value, dict):
        return {k: v if k in ("from", "role", "type") else every_string(v, text) for k, v in value.items()}
    return value


def shape_lines(fmt: str) -> list[bytes]:
    """The base row, each field replaced by each odd value, and a few rows odd as a whole."""
    base = SHAPE_BASES[fmt]
    rows = [base]
    rows += [replaced(base, path, value) for path in SHAPE_PATHS[fmt] for value in ODD_VALUES.values()]
    rows.append({**base, "unknown_field": {"nested": [1, {"x": None}]}, "another": "\U0001f600"})
    rows.append(every_string(base, ODD_VALUES["unicode"]))
    rows.append(every_string(base, ""))
    rows.append(every_string(base, "long " * 6_000))
    if fmt == "alpaca":  # the variants the reader knows: ranked outputs, preference pairs, seed tasks
        for value in ODD_VALUES.values():
            rows.append({"instruction": "x", "chosen": value, "rejected": value})
            rows.append({"instruction": "x", "instances": value})
            rows.append({"instruction": "x", "instances": [{"input": value, "output": "o"}, value]})
    if fmt == "sharegpt":  # function_call values that are JSON text of odd shapes
        for value in ['{"name": 5}', "[1, 2]", '{"name": "f", "arguments": "' + "[" * 3000 + '"}', "[" * 3000, "{}"]:
            rows.append(replaced(base, ("conversations", 1, "value"), value))
    return [json.dumps(r, ensure_ascii=False).encode() for r in rows] + TOP_LEVEL_LINES


SHAPE_RUNS = [
    (fmt, target, suffix, lossy)
    for fmt in SHAPE_BASES
    for target, suffix, lossy in [
        *(
            (t, "jsonl", lossy)
            for t in ("canonical", "alpaca", "sharegpt", "openai", "p3", "oasst")
            for lossy in (0, 1)
        ),
        *((t, s, 0) for t in dict.fromkeys((fmt, "canonical")) for s in ("json", "csv", "parquet")),
    ]
]


@pytest.fixture(scope="module")
def shape_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, int]]:
    folder = tmp_path_factory.mktemp("shapes")
    files = {}
    for fmt in SHAPE_BASES:
        lines = shape_lines(fmt)
        path = folder / f"{fmt}-shapes.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        files[fmt] = (path, len(lines))
    return files


@pytest.mark.parametrize(("fmt", "target", "suffix", "lossy"), SHAPE_RUNS)
def test_odd_shapes_are_converted_or_rejected_with_a_reason(
    fmt: str, target: str, suffix: str, lossy: int, shape_files: dict, tmp_path: Path
) -> None:
    path, rows = shape_files[fmt]
    out = tmp_path / f"out.{suffix}"
    extra = ["--lossy"] if lossy else []
    for threads in ["all", "top"] if fmt == "oasst" else ["all"]:
        args = ["convert", path, out, "--from", fmt, "--to", target, "--on-error", "skip", "--oasst-threads", threads]
        run = datakit_cli(*args, *extra)
        status = check_contract(run, created=(out, Path(f"{out}.rejects.jsonl")), folders=(tmp_path,))
        assert status == 0, f"skipping bad rows cannot fail on a readable file:\n{run.stderr}"
        counts = check_convert_output(run, out, Path(f"{out}.rejects.jsonl"), rows)
        assert counts.rejected >= len(TOP_LEVEL_LINES)  # the scalar lines at least


@pytest.mark.parametrize("fmt", list(SHAPE_BASES))
def test_odd_shapes_fail_at_the_first_bad_row_without_skip(fmt: str, shape_files: dict, tmp_path: Path) -> None:
    """Without --on-error skip, convert and the steps stop at the row that skip mode rejects first."""
    path, rows = shape_files[fmt]
    skip = datakit_cli(
        "convert", path, tmp_path / "skip.jsonl", "--from", fmt, "--to", "canonical", "--on-error", "skip"
    )
    assert check_contract(skip) == 0, skip.stderr
    first = jsonl(tmp_path / "skip.jsonl.rejects.jsonl")[0]
    for args in (
        ["convert", path, tmp_path / "out.jsonl", "--from", fmt, "--to", "canonical"],
        ["dedupe", path, tmp_path / "out.jsonl", "--from", fmt, "--method", "exact"],
        ["filter", path, tmp_path / "out.jsonl", "--from", fmt],
    ):
        run = datakit_cli(*args)
        side = (tmp_path / "out.jsonl.clusters.jsonl", tmp_path / "out.jsonl.rejects.jsonl")
        assert check_contract(run, created=(tmp_path / "out.jsonl", *side), folders=(tmp_path,)) == 1
        names(run, f"{path.name}:{first['line']}")
    inspect = datakit_cli("inspect", path, "--json")  # detection over odd rows
    if check_contract(inspect) == 0:
        report = json.loads(inspect.stdout)
        assert report["rows"] == rows and report["rejected"] + report["skipped"] <= rows


def deep_rows(fmt: str) -> list[dict]:
    """Rows holding a value nested 300 levels deep: orjson reads 1,024 levels but writes 255."""
    base, deep = SHAPE_BASES[fmt], json.loads("[" * 300 + "]" * 300)
    rows = [{**base, "deep_field": deep}]
    if fmt in ("canonical", "openai"):
        rows.append({**base, "tools": [deep]})
    if fmt == "canonical":
        rows.append(replaced(base, ("meta", "deep"), deep))
    if fmt == "oasst":
        rows.append(replaced(base, ("prompt", "replies", 0, "labels"), deep))
    if fmt == "openai":
        rows.append(replaced(base, ("messages", 4, "weight"), deep))
    if fmt == "alpaca":
        rows.append({**base, "rejected": deep})
    if fmt == "p3":
        rows.append({**base, "idx": deep})
    return rows


@pytest.mark.parametrize("fmt", list(SHAPE_BASES))
def test_values_nested_deeper_than_writers_go(fmt: str, tmp_path: Path) -> None:
    """Each such row is rejected (or written) with the others accounted for, in every mode."""
    rows = [SHAPE_BASES[fmt], *deep_rows(fmt)]
    path = tmp_path / "deep.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for target in ("canonical", fmt):
        out = tmp_path / f"out-{target}.jsonl"
        run = datakit_cli("convert", path, out, "--from", fmt, "--to", target, "--on-error", "skip")
        assert check_contract(run, folders=(tmp_path,)) == 0, run.stderr
        check_convert_output(run, out, Path(f"{out}.rejects.jsonl"), len(rows))
    run = datakit_cli("convert", path, tmp_path / "fail.jsonl", "--from", fmt, "--to", "canonical")
    if check_contract(run, created=(tmp_path / "fail.jsonl",), folders=(tmp_path,)) == 1:
        # (p3, canonical ignore unknown fields); the error names the deep field
        named = r"deep\.jsonl:[23]: .*field '(deep_field|tools|idx|labels)' is nested more"
        assert re.search(named, run.line()), run.line()
    run = datakit_cli("filter", path, tmp_path / "filter.jsonl", "--from", fmt, "--to", "canonical")
    created = (tmp_path / "filter.jsonl", tmp_path / "filter.jsonl.rejects.jsonl")
    if check_contract(run, created=created, folders=(tmp_path,)) == 1:
        assert re.search(r"deep\.jsonl:[23]: ", run.line()), run.line()


HUGE = "x" * 1_000_000
HUGE_VALUE_ROWS = {
    "sharegpt-role": ("sharegpt", {"conversations": [{"from": HUGE, "value": "hi"}, {"from": "gpt", "value": "yo"}]}),
    "openai-role": ("openai", {"messages": [{"role": HUGE, "content": "hi"}]}),
    "openai-part-type": ("openai", {"messages": [{"role": "user", "content": [{"type": HUGE}]}]}),
    "canonical-role": (
        "canonical",
        {"id": "a", "system": None, "messages": [{"role": HUGE, "content": "x"}], "tools": None, "meta": {}},
    ),
    "oasst-rank": (
        "oasst",
        {
            "message_tree_id": "t",
            "prompt": {
                "message_id": "a",
                "role": "prompter",
                "text": "hi",
                "replies": [{"message_id": "b", "role": "assistant", "text": "yo", "rank": HUGE}],
            },
        },
    ),
}


@pytest.mark.parametrize("case", list(HUGE_VALUE_ROWS))
def test_an_error_quoting_a_huge_value_stays_one_short_line(case: str, tmp_path: Path) -> None:
    fmt, row = HUGE_VALUE_ROWS[case]
    path = tmp_path / "huge.jsonl"
    path.write_text(json.dumps(row) + "\n")
    extra = ["--oasst-threads", "top"] if fmt == "oasst" else []
    run = datakit_cli("convert", path, tmp_path / "out.jsonl", "--from", fmt, "--to", "canonical", *extra)
    assert check_contract(run, created=(tmp_path / "out.jsonl",)) == 1
    names(run, "huge.jsonl:1")


# --- OpenAssistant message tables -----------------------------------------------------------


def flat(message_id: Any, parent: Any, role: str, text: str = "text", tree: str = "t1", **extra: Any) -> dict:
    return {"message_id": message_id, "parent_id": parent, "message_tree_id": tree, "role": role, "text": text, **extra}


def test_oasst_table_with_a_repeated_message_id_names_it_never_drops_a_row(tmp_path: Path) -> None:
    rows = [
        flat("a1", None, "prompter", "Hi"),
        flat("a2", "a1", "assistant", "Hello."),
        flat("a2", "a1", "assistant", "Hey there."),  # the same id again, other text
        flat("a3", "a2", "prompter", "More?"),
        flat("b1", None, "prompter", "Other tree", tree="t2"),
        flat("b2", "b1", "assistant", "Its answer.", tree="t2"),
    ]
    path = tmp_path / "table.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = datakit_cli("convert", path, tmp_path / "out.jsonl", "--to", "canonical")
    status = check_contract(run, created=(tmp_path / "out.jsonl",), folders=(tmp_path,))
    if status == 1:
        names(run, "table.jsonl", "a2")
    else:  # the repeat is accounted for: every row read, the second text not silently lost
        counts = check_convert_output(run, tmp_path / "out.jsonl", None, len(rows))
        texts = {m["content"] for r in jsonl(tmp_path / "out.jsonl") for m in r["messages"]}
        assert {"Hello.", "Hey there."} <= texts, f"a message vanished: {counts}"
    skip = datakit_cli("convert", path, tmp_path / "s.jsonl", "--to", "canonical", "--on-error", "skip")
    assert check_contract(skip, folders=(tmp_path,)) == 0
    counts = check_convert_output(skip, tmp_path / "s.jsonl", tmp_path / "s.jsonl.rejects.jsonl", len(rows))
    reasons = [r["reason"] for r in jsonl(tmp_path / "s.jsonl.rejects.jsonl")]
    assert any("a2" in reason for reason in reasons) or counts.rejected == 0, reasons
    assert "Its answer." in {m["content"] for r in jsonl(tmp_path / "s.jsonl") for m in r["messages"]}
    for step in (["dedupe", "--method", "exact"], ["filter"]):
        run = datakit_cli(step[0], path, tmp_path / "step.jsonl", *step[1:])
        if check_contract(run, created=(tmp_path / "step.jsonl",), folders=(tmp_path,)) == 1:
            names(run, "table.jsonl", "a2")


OASST_TABLES = {
    "parent-id-a-list": [flat("a", None, "prompter"), flat("b", ["a"], "assistant")],
    "parent-id-a-number": [flat("a", None, "prompter"), flat("b", 7, "assistant")],
    "message-id-an-object": [flat("a", None, "prompter"), flat({"id": "b"}, "a", "assistant")],
    "cycle-of-parents": [
        flat("a", None, "prompter"),
        flat("b", "a", "assistant"),
        flat("c", "d", "prompter"),
        flat("d", "c", "assistant"),
    ],  # fmt: skip
    "own-parent": [flat("a", None, "prompter"), flat("b", "a", "assistant"), flat("c", "c", "assistant")],
    "two-roots": [flat("a", None, "prompter"), flat("b", "", "prompter"), flat("c", "a", "assistant")],
    "chain-3000-deep": [
        flat(f"m{i}", f"m{i - 1}" if i else None, "assistant" if i % 2 else "prompter") for i in range(3000)
    ],
    "bad-rank-top": [
        flat("a", None, "prompter"),
        flat("b", "a", "assistant", rank="first"),
        flat("c", "a", "assistant", rank=[1]),
    ],  # fmt: skip
    "role-a-list": [flat("a", None, "prompter"), flat("b", "a", ["assistant"])],  # type: ignore[arg-type]
}


@pytest.mark.parametrize("case", list(OASST_TABLES))
def test_odd_oasst_tables_account_for_every_row(case: str, tmp_path: Path) -> None:
    rows = OASST_TABLES[case]
    path = tmp_path / "table.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for threads, target in (("all", "sharegpt"), ("top", "sharegpt"), ("all", "oasst")):
        out = tmp_path / f"out-{threads}-{target}.jsonl"
        args = ["convert", path, out, "--from", "oasst", "--to", target, "--on-error", "skip"]
        run = datakit_cli(*args, "--oasst-threads", threads)
        assert check_contract(run, folders=(tmp_path,)) == 0, run.stderr
        check_convert_output(run, out, Path(f"{out}.rejects.jsonl"), len(rows))


# --- options ------------------------------------------------------------------------------

NUMERIC_OPTIONS = {
    "dedupe": ["--threshold", "--cosine", "--ngram", "--num-perm"],
    "filter": [
        "--min-response-chars",
        "--max-prompt",
        "--max-response",
        "--max-repeated-ngram-share",
        "--echo-overlap",
    ],
    "select": ["--k", "--seed", "--threshold", "--clusters"],
}
BAD_NUMBERS = ["-1", "0", "nan", "inf", "-inf", "1e308", "99999999999999999999999", "abc", ""]
OPTION_CASES = [
    (step, flag, value) for step, flags in NUMERIC_OPTIONS.items() for flag in flags for value in BAD_NUMBERS
]
OPTION_CASES += [
    ("filter", "--rules", ""),
    ("filter", "--rules", ",,,"),
    ("filter", "--rules", "length,nonsense"),
    ("filter", "--languages", ""),
    ("dedupe", "--keep", "score:"),
    ("dedupe", "--keep", "nonsense"),
    ("dedupe", "--on", "nonsense"),
    ("select", "--score", ""),
    ("select", "--k", "100"),  # more than the input holds
    ("select", "--k", "0.0001"),  # a share that rounds to nothing
]

SMALL_ROWS = [*GOOD_ROWS, GOOD_ROWS[0], {"instruction": "Say nothing.", "input": "", "output": ""}]


@pytest.fixture(scope="module")
def small_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("small") / "small.jsonl"
    path.write_bytes(jsonl_bytes(SMALL_ROWS))
    return path


def step_args(step: str, source: Path, out: Path) -> list[Any]:
    if step == "select":
        return ["select", source, out, "--method", "random"]
    if step == "dedupe":
        return ["dedupe", source, out]
    return [step, source, out]


@pytest.mark.parametrize(("step", "flag", "value"), OPTION_CASES)
def test_out_of_range_and_wrong_type_options(
    step: str, flag: str, value: str, small_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    k = [] if step != "select" or flag == "--k" else ["--k", "2"]
    run = datakit_cli(*step_args(step, small_file, out), *k, flag, value)
    side = (Path(f"{out}.clusters.jsonl"), Path(f"{out}.rejects.jsonl"), Path(f"{out}.png"))
    if check_contract(run, created=(out, *side), folders=(tmp_path,)) == 1:
        key = flag.lstrip("-")
        assert key in run.line() or key.replace("-", "_") in run.line(), f"the error does not name {flag}: {run.line()}"
    else:
        read, _, _ = step_counts(run, out)
        assert read == len(SMALL_ROWS)


@pytest.mark.parametrize("command", FILE_COMMANDS, ids=lambda c: c.name)
def test_a_one_record_input(command: Command, tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_bytes(jsonl_bytes(GOOD_ROWS[:1]))
    out = tmp_path / "out"
    out.mkdir()
    run = datakit_cli(*command.args(path, out))
    assert check_contract(run, created=command.outputs(out), folders=(out,)) == 0, run.stderr
    check_success(command, run, out, 1, 1)


QUIET_RUNS = {
    "convert": ["convert", "{in}", "{out}", "--to", "sharegpt", "--quiet"],
    "convert-skip": ["convert", "{in}", "{out}", "--to", "p3", "--on-error", "skip", "--quiet"],
    "dedupe-exact": ["dedupe", "{in}", "{out}", "--method", "exact", "--quiet"],
    "dedupe-minhash": ["dedupe", "{in}", "{out}", "--method", "minhash", "--quiet"],
    "filter": ["filter", "{in}", "{out}", "--quiet"],
    "select-random": ["select", "{in}", "{out}", "--method", "random", "--k", "2", "--quiet"],
}


@pytest.mark.parametrize("name", list(QUIET_RUNS))
def test_quiet_prints_nothing_on_success(name: str, small_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    run = datakit_cli(*(str(small_file) if a == "{in}" else str(out) if a == "{out}" else a for a in QUIET_RUNS[name]))
    assert check_contract(run, folders=(tmp_path,)) == 0, run.stderr
    assert run.stdout == run.stderr == "", f"--quiet printed: {run.stdout!r} {run.stderr!r}"
    assert count_rows(out) > 0


# --- paths: outputs that are the input, each other, folders ----------------------------------

PATH_COMMANDS = {
    "convert": (["convert", "{in}", "{out}", "--to", "sharegpt", "--on-error", "skip"], "--rejects"),
    "dedupe": (["dedupe", "{in}", "{out}", "--method", "exact"], "--clusters"),
    "filter": (["filter", "{in}", "{out}"], "--rejects"),
    "select": (["select", "{in}", "{out}", "--method", "random", "--k", "2"], "--plot"),
}


def _output_is_folder(folder: Path, source: Path) -> tuple[Path, list]:
    (folder / "out.jsonl").mkdir()
    return folder / "out.jsonl", []


def _output_under_a_file(folder: Path, source: Path) -> tuple[Path, list]:
    (folder / "plain.jsonl").write_text("a file, not a folder\n")
    return folder / "plain.jsonl" / "out.jsonl", []


def _symlink_to_input(folder: Path, source: Path) -> tuple[Path, list]:
    (folder / "link.jsonl").symlink_to(source)
    return folder / "link.jsonl", []


def _side_is_folder(folder: Path, source: Path, flag: str) -> tuple[Path, list]:
    (folder / "side.jsonl").mkdir()
    return folder / "out.jsonl", [flag, folder / "side.jsonl"]


# name -> (how to make (output, extra args), whether it must fail)
PATH_CASES: dict[str, tuple[Callable[..., tuple[Path, list]], bool | None]] = {
    "output-is-input": (lambda f, s, flag: (s, []), True),
    "output-is-input-respelled": (lambda f, s, flag: (s.parent / "sub" / ".." / s.name, []), True),
    "output-is-a-symlink-to-input": (lambda f, s, flag: _symlink_to_input(f, s), None),
    "side-is-input": (lambda f, s, flag: (f / "out.jsonl", [flag, s]), True),
    "side-is-output": (lambda f, s, flag: (f / "out.jsonl", [flag, f / "out.jsonl"]), True),
    "output-in-missing-folder": (lambda f, s, flag: (f / "missing" / "deeper" / "out.jsonl", []), None),
    "side-in-missing-folder": (lambda f, s, flag: (f / "out.jsonl", [flag, f / "nowhere" / "side.jsonl"]), None),
    "output-is-a-folder": (lambda f, s, flag: _output_is_folder(f, s), True),
    "output-under-a-file": (lambda f, s, flag: _output_under_a_file(f, s), True),
    "side-is-a-folder": (lambda f, s, flag: _side_is_folder(f, s, flag), True),
}


@pytest.mark.parametrize("case", list(PATH_CASES))
@pytest.mark.parametrize("command", list(PATH_COMMANDS))
def test_outputs_never_replace_the_input_or_each_other(command: str, case: str, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    (tmp_path / "sub").mkdir()
    source.write_bytes(jsonl_bytes(SMALL_ROWS))
    before = source.read_bytes()
    template, side_flag = PATH_COMMANDS[command]
    make, must_fail = PATH_CASES[case]
    out, extra = make(tmp_path, source, side_flag)
    out_was = out.exists() or out.is_symlink()
    args = [str(source) if a == "{in}" else str(out) if a == "{out}" else a for a in template]
    run = datakit_cli(*args, *extra)
    created = () if out_was else (out,)
    status = check_contract(run, created=created, folders=(tmp_path,))
    assert source.read_bytes() == before, f"{case}: the input was overwritten"
    if must_fail:
        assert status == 1, f"{case}: {command} went ahead:\n{run.stderr}"
    if status == 1:  # the error names the path, or the part of it that is in the way
        parts = {part for p in (out, *extra[1:2]) for part in Path(str(p)).parts[-3:]}
        assert any(part in run.line() for part in parts), f"no path named: {run.line()}"
    if case == "output-is-a-folder":
        assert out.is_dir() and not any(out.iterdir()), "the folder was changed"
    if status == 0 and not out.is_symlink():
        assert count_rows(out) > 0


@pytest.mark.parametrize("target", ["input", "output"])
def test_convert_dataset_info_never_replaces_the_input_or_output(target: str, tmp_path: Path) -> None:
    source = tmp_path / "in.json"
    source.write_text(json.dumps(SMALL_ROWS))
    before = source.read_bytes()
    out = tmp_path / "out.json"
    info = source if target == "input" else out
    run = datakit_cli("convert", source, out, "--to", "sharegpt", "--dataset-info", info)
    assert check_contract(run, created=() if target == "input" else (out,), folders=(tmp_path,)) == 1
    assert source.read_bytes() == before
    names(run, info.name)


STDIN_CASES = {
    "empty": b"",
    "binary": random.Random(14).randbytes(256).replace(b"\n", b" "),
    "nested-100k": b"[" * 100_000,
    "one-record-no-newline": json.dumps(GOOD_ROWS[0]).encode(),
    "json-array": json.dumps(GOOD_ROWS).encode(),
    "array-cut": json.dumps(GOOD_ROWS).encode()[:-10],
    "invalid-utf8": b'{"instruction": "\xff", "output": "x"}\n',
}


@pytest.mark.parametrize("step", ["convert", "dedupe", "filter"])
@pytest.mark.parametrize("case", list(STDIN_CASES))
def test_hostile_standard_input(case: str, step: str, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    args = ["convert", "-", out, "--to", "sharegpt"] if step == "convert" else [step, "-", out, "--from", "alpaca"]
    run = datakit_cli(*args, stdin=STDIN_CASES[case])
    status = check_contract(run, created=(out,), folders=(tmp_path,))
    if status == 0:
        if step == "convert":
            check_convert_output(run, out, None, None)
        else:
            step_counts(run, out)


# --- evals run --dry-run with broken recipes -----------------------------------------------

BASE_RECIPE = {
    "name": "hostile",
    "model": "smollm2-135m",
    "template": "chatml",
    "seeds": [0, 1, 2],
    "train": {"max_steps": 3, "batch_size": 2},
    "eval": {"tasks": ["heldout_loss"]},
    "arms": {"base": {"train": False}, "all": {"data": [{"path": "sample.jsonl"}]}},
    "baseline": "base",
}


def recipe_with(**changes: Any) -> bytes:
    recipe = json.loads(json.dumps(BASE_RECIPE))
    for dotted, value in changes.items():
        keys = dotted.split("__")
        target = recipe
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return yaml.safe_dump(recipe, allow_unicode=True).encode()


def alias_bomb(levels: int = 6) -> bytes:
    """YAML anchors that expand tenfold per level (a million strings at 6 levels)."""
    lines = ["profiles:", "  a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    body = yaml.safe_dump({k: v for k, v in BASE_RECIPE.items() if k != "seeds"})
    return ("\n".join(lines) + f"\nseeds: *a{levels - 1}\n" + body).encode()


ALL_DATA = "arms__all__data"
RECIPE_CASES: dict[str, bytes] = {
    "empty": b"",
    "comments-only": b"# nothing here\n\n",
    "yaml-syntax-error": b"name: [unclosed\narms: {}\n",
    "top-level-list": b"- 1\n- 2\n",
    "top-level-scalar": b"42\n",
    "invalid-utf8": b"name: \xff\xfe\n",
    "nul-byte": b"name: a\x00b\n",
    "nested-100k": b"[" * 100_000,
    "alias-bomb": alias_bomb(),
    "arms-a-list": recipe_with(arms=[1, 2]),
    "no-arms": recipe_with(arms={}),
    "data-not-a-list": recipe_with(**{ALL_DATA: "sample.jsonl"}),
    "data-path-a-folder": recipe_with(**{ALL_DATA: [{"path": "."}]}),
    "data-path-missing": recipe_with(**{ALL_DATA: [{"path": "absent.jsonl"}]}),
    "data-weight-nan": recipe_with(**{ALL_DATA: [{"path": "sample.jsonl", "weight": float("nan")}]}),
    "data-weight-inf": recipe_with(**{ALL_DATA: [{"path": "sample.jsonl", "weight": float("inf")}]}),
    "data-weight-text": recipe_with(**{ALL_DATA: [{"path": "sample.jsonl", "weight": "lots"}]}),
    "seeds-text": recipe_with(seeds="abc"),
    "seeds-too-big": recipe_with(seeds=[10**30, 1, 2]),
    "train-a-list": recipe_with(train=[1]),
    "train-lr-nan": recipe_with(train__lr=float("nan")),
    "train-lr-inf": recipe_with(train__lr=float("inf")),
    "train-steps-negative": recipe_with(train__max_steps=-1),
    "eval-limit-negative": recipe_with(eval__limit=-5),
    "eval-limit-nan": recipe_with(eval__limit=float("nan")),
    "eval-tasks-empty": recipe_with(eval__tasks=[]),
    "steps-not-a-list": recipe_with(arms__all__steps="dedupe"),
    "step-unknown": recipe_with(arms__all__steps=[{"dedup": {}}]),
    "step-two-in-one": recipe_with(arms__all__steps=[{"dedupe": {}, "filter": {}}]),
    "step-threshold-nan": recipe_with(arms__all__steps=[{"dedupe": {"threshold": float("nan")}}]),
    "step-select-k-negative": recipe_with(arms__all__steps=[{"select": {"k": -1}}]),
    "step-filter-rules-empty": recipe_with(arms__all__steps=[{"filter": {"rules": []}}]),
    "template-a-number": recipe_with(template=5),
}


@pytest.mark.parametrize("case", [*RECIPE_CASES, "recipe-is-a-folder", "recipe-missing"])
def test_evals_dry_run_refuses_a_broken_recipe_in_one_line(case: str, tmp_path: Path) -> None:
    from evals.cli import main as evals_main

    (tmp_path / "sample.jsonl").write_bytes(jsonl_bytes(GOOD_ROWS))
    recipe = tmp_path / "recipe.yaml"
    if case == "recipe-is-a-folder":
        recipe.mkdir()
    elif case != "recipe-missing":
        recipe.write_bytes(RECIPE_CASES[case])
    run_dir = tmp_path / "run"
    run = datakit_cli("run", recipe, "--dry-run", "--out", run_dir, cli=evals_main)
    assert check_contract(run, created=(run_dir,), folders=(tmp_path,)) == 1, (
        f"a broken recipe was accepted:\n{run.stderr}"
    )
    names(run, "recipe.yaml")


# --- hypothesis: random rows of every format --------------------------------------------------

SETTINGS = settings(
    max_examples=HYPOTHESIS_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
SPECIAL_TEXT = st.sampled_from(
    ["", " ", "\n", "\U0001f600", "مرحبا", "e\u0301\u0301", "\u202eevil\u202c", "\x00", "\ud800", "\ufeff", "x" * 3000]
)
text_value = st.one_of(st.text(max_size=12), st.text(max_size=12), st.text(max_size=12), SPECIAL_TEXT)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), text_value)
json_any = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


# Valid rows of each format first; then, in most examples, one to three values anywhere in a row
# replaced by any JSON value, so that both the writers (valid rows) and every check of the
# readers (damaged ones) are reached.
CALL_TEXT = st.sampled_from(['{"name": "f", "arguments": {"x": 1}}', '[{"name": "f"}]', '{"name": 5}', "[" * 3000])


@st.composite
def alpaca_row(draw: st.DrawFn) -> dict:
    row = {"instruction": draw(text_value), "input": draw(text_value), "output": draw(text_value)}
    if draw(st.booleans()):
        row["system"] = draw(text_value)
    if draw(st.booleans()):
        row["history"] = draw(st.lists(st.lists(text_value, min_size=2, max_size=2), max_size=2))
    return row


@st.composite
def sharegpt_row(draw: st.DrawFn) -> dict:
    turns = [{"from": "system", "value": draw(text_value)}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        turns.append({"from": draw(st.sampled_from(["human", "user"])), "value": draw(text_value)})
        if draw(st.booleans()):
            turns.append({"from": "function_call", "value": draw(CALL_TEXT)})
            turns.append({"from": "observation", "value": draw(text_value)})
        turns.append({"from": draw(st.sampled_from(["gpt", "assistant"])), "value": draw(text_value)})
    row: dict[str, Any] = {"conversations": turns}
    if draw(st.booleans()):
        row["tools"] = draw(st.sampled_from(["[]", '[{"name": "f", "parameters": {}}]']))
    return row


@st.composite
def openai_row(draw: st.DrawFn) -> dict:
    messages = [{"role": draw(st.sampled_from(["system", "developer"])), "content": draw(text_value)}]
    messages = messages if draw(st.booleans()) else []
    for n in range(draw(st.integers(1, 3))):
        content = draw(st.one_of(text_value, st.lists(st.builds(lambda t: {"type": "text", "text": t}, text_value))))
        messages.append({"role": "user", "content": content})
        if draw(st.booleans()):
            call = {"id": f"call{n}", "type": "function", "function": {"name": "f", "arguments": draw(CALL_TEXT)}}
            messages.append({"role": "assistant", "tool_calls": [call]})
            messages.append({"role": "tool", "tool_call_id": f"call{n}", "content": draw(text_value)})
        messages.append({"role": "assistant", "content": draw(text_value), "weight": draw(st.sampled_from([0, 1]))})
    row: dict[str, Any] = {"messages": messages}
    if draw(st.booleans()):
        row["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    return row


@st.composite
def p3_row(draw: st.DrawFn) -> dict:
    row = {"inputs_pretokenized": draw(text_value), "targets_pretokenized": draw(text_value)}
    if draw(st.booleans()):
        row["answer_choices"] = draw(st.lists(text_value, max_size=3))
        row["is_correct"] = draw(st.sampled_from([True, False, "false", "True"]))
    return row


def oasst_node(role: str = "prompter", depth: int = 0) -> st.SearchStrategy:
    other = "assistant" if role == "prompter" else "prompter"
    replies = st.lists(oasst_node(other, depth + 1), max_size=2) if depth < 3 else st.just([])
    return st.fixed_dictionaries(
        {"message_id": st.uuids().map(str), "role": st.just(role), "text": text_value, "replies": replies},
        optional={"rank": st.integers(0, 2), "lang": st.sampled_from(["en", "de"]), "synthetic": st.booleans()},
    )


oasst_tree = st.builds(
    lambda tree_id, prompt: {"message_tree_id": tree_id, "prompt": prompt}, st.uuids().map(str), oasst_node()
)


def oasst_table(tree: dict) -> list[dict]:
    """A tree export as the flat message table (one row per message)."""
    rows, stack = [], [(tree["prompt"], None)]
    while stack:
        node, parent = stack.pop()
        rows.append({**{k: v for k, v in node.items() if k != "replies"}, "parent_id": parent,
                     "message_tree_id": tree["message_tree_id"]})  # fmt: skip
        stack.extend((child, node["message_id"]) for child in node["replies"])
    return rows


VALID_ROWS: dict[str, st.SearchStrategy] = {
    "alpaca": alpaca_row(),
    "sharegpt": sharegpt_row(),
    "openai": openai_row(),
    "p3": p3_row(),
    "oasst-trees": oasst_tree,
}
FORMAT_OF = {"alpaca": "alpaca", "sharegpt": "sharegpt", "openai": "openai", "p3": "p3", "oasst-trees": "oasst",
             "oasst-table": "oasst"}  # fmt: skip


def value_paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every place in a JSON value: the keys and indices that lead to it."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        yield (*prefix, key)
        yield from value_paths(item, (*prefix, key))


@st.composite
def damaged(draw: st.DrawFn, row: dict) -> dict:
    """The row, or the row with one to three values (anywhere in it) replaced by any JSON value."""
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        paths = list(value_paths(row))
        if not paths:
            break
        row = replaced(row, draw(st.sampled_from(paths)), draw(json_any))
    if draw(st.integers(0, 9)) == 0:
        row = {**row, draw(st.text(max_size=8)): draw(json_any)}  # an unknown field
    return row


RAW_LINES = st.sampled_from(
    [b"42", b'"text"', b"[1, 2]", b"null", b"{", b"\xff\xfe", b"\x00", b"[" * 3000, BOM + b"{}"]
)


@st.composite
def input_lines(draw: st.DrawFn, kind: str) -> list[bytes]:
    """JSONL lines of rows of one format, valid or damaged (lone surrogates written raw or
    escaped), now and then a line that is no row at all."""
    if kind == "oasst-table":
        rows = [r for tree in draw(st.lists(oasst_tree, min_size=1, max_size=2)) for r in oasst_table(tree)]
        rows = [draw(damaged(r)) if draw(st.integers(0, 3)) == 0 else r for r in rows]
        if len(rows) > 1 and draw(st.booleans()):  # a message twice, or one missing
            k = draw(st.integers(0, len(rows) - 1))
            rows = rows + [rows[k]] if draw(st.booleans()) else rows[:k] + rows[k + 1 :]
        rows = draw(st.permutations(rows))[:40]
    else:
        rows = draw(st.lists(st.one_of(*[VALID_ROWS[kind].flatmap(damaged)] * 5, RAW_LINES), min_size=1, max_size=6))
    lines = []
    for value in rows:
        if isinstance(value, bytes):
            lines.append(value)
        else:
            ascii_only = draw(st.booleans())
            lines.append(json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"))
    return lines


def write_lines(folder: Path, lines: list[bytes]) -> tuple[Path, int]:
    path = folder / "random.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, sum(1 for line in lines if line.strip())


@SETTINGS
@given(
    kind=st.sampled_from(list(FORMAT_OF)),
    data=st.data(),
    target=st.sampled_from(["canonical", "alpaca", "sharegpt", "openai", "p3", "oasst"]),
    container=st.sampled_from(["jsonl", "json", "csv", "parquet", "jsonl.gz"]),
    skip=st.booleans(),
    detect=st.booleans(),
    quiet=st.booleans(),
)
def test_random_rows_convert_or_fail_cleanly(
    kind: str, data: st.DataObject, target: str, container: str, skip: bool, detect: bool, quiet: bool
) -> None:
    lines = data.draw(input_lines(kind))
    with tempfile.TemporaryDirectory(dir=WORK) as folder:
        folder = Path(folder)
        path, rows = write_lines(folder, lines)
        out = folder / f"out.{container}"
        rejects = Path(f"{out}.rejects.jsonl")
        args = ["convert", path, out, "--to", target]
        args += [] if detect else ["--from", FORMAT_OF[kind]]
        args += ["--on-error", "skip"] if skip else []
        args += ["--quiet"] if quiet else []
        run = datakit_cli(*args)
        status = check_contract(run, created=(out, rejects), folders=(folder,))
        if status == 1:
            if skip and detect:  # detection may fail on odd rows; the error says to pass --from
                assert "--from" in run.line(), run.line()
            elif skip:
                pytest.fail(f"with --from and --on-error skip every row is converted or rejected:\n{run.stderr}")
            else:
                names(run, path.name)
            return
        if quiet:
            assert run.stdout == run.stderr == "", "--quiet printed"
            count_rows(out)  # a whole file
            return
        counts = check_convert_output(run, out, rejects if skip else None, rows)
        if target == "canonical" and kind != "oasst-table":
            # row by row: each line is in the output (its records name it), or in the rejects, or skipped
            metas = [r["meta"] if isinstance(r["meta"], dict) else json.loads(r["meta"]) for r in output_rows(out)]
            written = {meta["source"]["line"] for meta in metas}
            refused = {r["line"] for r in jsonl(rejects)} if skip else set()
            assert not written & refused, f"lines both written and rejected: {sorted(written & refused)}"
            assert rows - len(written | refused) == counts.skipped, (
                f"{run.stderr}\nwritten {written} rejected {refused}"
            )


@SETTINGS
@given(kind=st.sampled_from(list(FORMAT_OF)), data=st.data())
def test_random_rows_through_dedupe_and_filter(kind: str, data: st.DataObject) -> None:
    """A file convert reads without a reject goes through the steps with every record accounted
    for; a file it rejects a row of stops the steps at that same row."""
    lines = data.draw(input_lines(kind))
    fmt = FORMAT_OF[kind]
    with tempfile.TemporaryDirectory(dir=WORK) as folder:
        folder = Path(folder)
        path, rows = write_lines(folder, lines)
        probe = folder / "probe.jsonl"
        run = datakit_cli("convert", path, probe, "--from", fmt, "--to", "canonical", "--on-error", "skip")
        assert check_contract(run, folders=(folder,)) == 0, run.stderr
        counts = check_convert_output(run, probe, Path(f"{probe}.rejects.jsonl"), rows)
        first_reject = next(iter(jsonl(Path(f"{probe}.rejects.jsonl"))), None)
        for step, side in (("dedupe", "clusters"), ("filter", "rejects")):
            out = folder / f"{step}.jsonl"
            side_path = Path(f"{out}.{side}.jsonl")
            extra = ["--method", "exact"] if step == "dedupe" else []
            run = datakit_cli(step, path, out, "--from", fmt, "--to", "canonical", *extra)
            status = check_contract(run, created=(out, side_path), folders=(folder,))
            if first_reject is not None:
                assert status == 1, f"{step} went past a row convert rejects ({first_reject['reason']})"
                names(run, f"{path.name}:{first_reject['line']}")
                continue
            assert status == 0, f"{step} failed on rows convert reads whole:\n{run.stderr}"
            read, _, removed = step_counts(run, out)
            assert read == counts.records, f"{step} read {read} records, convert found {counts.records}"
            gone = removed_in_clusters(side_path) if step == "dedupe" else len(jsonl(side_path))
            assert removed == gone, f"{step}: removed {removed}, its {side} file lists {gone}"


# --- real processes -------------------------------------------------------------------------


def executable(name: str) -> str:
    found = Path(sys.executable).parent / name
    return str(found) if found.exists() else shutil.which(name) or name


def real_env() -> dict[str, str]:
    return {**os.environ, "DATAKIT_LOG_DIR": str(WORK / "bug-logs"), "TMPDIR": str(WORK / "scratch")}


def test_real_process_one_error_line_and_nothing_on_stdout(tmp_path: Path) -> None:
    source = truncated_gzip(tmp_path)
    out = tmp_path / "out.jsonl"
    done = subprocess.run(
        [executable("datakit"), "convert", str(source), str(out), "--to", "sharegpt"],
        capture_output=True,
        text=True,
        timeout=120,
        env=real_env(),
    )
    run = Run(["convert", str(source)], done.returncode, done.stdout, done.stderr)
    assert check_contract(run, created=(out,), folders=(tmp_path,)) == 1
    assert done.stdout == ""
    names(run, source.name)


def big_input(folder: Path, n: int = 60_000) -> Path:
    path = folder / "big.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"instruction": f"Question {i}: " + "word " * 20, "input": "", "output": "text " * 30}))
            f.write("\n")
    return path


def test_real_process_output_to_a_closed_pipe(tmp_path: Path) -> None:
    """``datakit convert big.jsonl - | head -1``: the reader goes away; no traceback, no noise."""
    source = big_input(tmp_path)
    proc = subprocess.Popen(
        [executable("datakit"), "convert", str(source), "-", "--to", "sharegpt"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=real_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # as `head -1` does
    stderr = proc.stderr.read().decode("utf-8", "replace")
    proc.wait(timeout=120)
    assert "Traceback" not in stderr and "bug in datakit" not in stderr, stderr[-2000:]
    assert proc.returncode in (0, 1, 141, -signal.SIGPIPE), proc.returncode
    assert len(stderr.splitlines()) <= 1 and stderr.count("Error:") <= 1, f"noise on stderr: {stderr[:500]!r}"


# --- the size of the corpus -------------------------------------------------------------------


def hostile_case_count() -> dict[str, int]:
    """How many hostile cases this module runs (the README quotes the total)."""
    counts = {
        "files x commands": len(HOSTILE_FILES) * len(FILE_COMMANDS),
        "byte order marks": 4,
        "standard input": len(STDIN_CASES) * 3,
        "odd-shape conversions": len(SHAPE_RUNS) + 2 * len(SHAPE_BASES),
        "huge values in errors": len(HUGE_VALUE_ROWS),
        "OpenAssistant tables": len(OASST_TABLES) + 1,
        "options, one-record inputs, --quiet": len(OPTION_CASES) + len(FILE_COMMANDS) + len(QUIET_RUNS),
        "paths": len(PATH_CASES) * len(PATH_COMMANDS) + 2,
        "recipes": len(RECIPE_CASES) + 2,
        "real processes": 2,
        "hypothesis examples": 2 * HYPOTHESIS_EXAMPLES,
    }
    counts["total"] = sum(counts.values())
    return counts
