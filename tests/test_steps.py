"""The step contract: one config per step for the CLI, recipes and Python; one report; one error
root; inputs from files, standard input or memory; outputs that never replace an input."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
import threading
from contextlib import closing
from pathlib import Path

import pytest
from conftest import fixture_path

import datakit
from datakit import pipeline
from datakit.errors import DatakitError, OptionError, StepError
from datakit.io import OverwriteError
from datakit.options import flag_name

ALPACA = fixture_path("llama-factory/alpaca_en_demo.json")


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datakit.cli", *args], input=stdin, capture_output=True)


@pytest.mark.parametrize("name", ["dedupe", "filter", "select", "synth", "shuffle", "corrupt"])
def test_every_config_field_is_a_flag_of_its_command_with_its_help(name: str) -> None:
    """The CLI is generated from the config: every recipe key is a flag, and no flag is made up."""
    from datakit.cli import main

    cls = pipeline.get(name)
    command = main.commands[name]
    options = {o for p in command.params for o in getattr(p, "opts", [])}
    for field in dataclasses.fields(cls.Config):
        if field.metadata.get("argument"):
            assert field.name in [p.name for p in command.params]
            continue
        assert flag_name(field.name) in options, field.name
        param = next(p for p in command.params if p.name == field.name)
        assert param.help.startswith(field.metadata["help"].rstrip("."))
    assert command.help == cls.help()


def test_a_bad_value_is_the_same_error_from_python_a_recipe_and_the_cli(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="threshold: must be between 0 and 1"):
        datakit.run("dedupe", [], threshold=1.5)
    from evals.recipe import RecipeError, check_step

    with pytest.raises(RecipeError, match=r"arms.a.steps\[0\].dedupe.threshold: must be between 0 and 1"):
        check_step("dedupe", {"threshold": 1.5}, "arms.a.steps[0].dedupe")
    result = cli("dedupe", str(ALPACA), str(tmp_path / "out.json"), "--threshold", "1.5")
    assert result.returncode == 1 and b"--threshold: must be between 0 and 1" in result.stderr
    assert b"Traceback" not in result.stderr


def test_settings_lsh_cannot_reach_fail_before_any_work_naming_the_key(tmp_path: Path) -> None:
    result = cli("dedupe", str(ALPACA), str(tmp_path / "out.json"), "--threshold", "0.01")
    assert result.returncode == 1 and b"--threshold: no bands x rows" in result.stderr, result.stderr
    assert not (tmp_path / "out.json").exists()
    datakit.run("dedupe", [], method="exact", threshold=0.01)  # exact does not use it
    with pytest.raises(OptionError, match="rules: needs at least one"):
        datakit.run("filter", [], rules="")
    with pytest.raises(OptionError, match="k: expected a finite number"):
        datakit.run("select", [], k=float("inf"))


def test_every_error_a_user_can_cause_is_a_datakit_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    for step, options in (("dedupe", {}), ("filter", {}), ("shuffle", {})):
        with pytest.raises(DatakitError, match="bad.jsonl:2: missing required field 'output'"):
            datakit.run(step, bad, tmp_path / f"{step}.jsonl", **options)
        assert not (tmp_path / f"{step}.jsonl").exists()  # nothing half-written
    with pytest.raises(StepError, match="unknown step 'dedup'"):
        datakit.run("dedup", bad)


def test_empty_input_gives_empty_output_or_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for step in ("dedupe", "filter", "shuffle"):
        report = datakit.run(step, empty, tmp_path / f"{step}.jsonl", from_format="alpaca").report
        assert report.read == report.written == 0 and (tmp_path / f"{step}.jsonl").read_text() == ""
    with pytest.raises(StepError, match="no records to select from"):
        datakit.run("select", empty, tmp_path / "select.jsonl", from_format="alpaca", k=3)


def test_standard_input_works_for_a_step_that_reads_its_input_twice(tmp_path: Path) -> None:
    rows = json.loads(ALPACA.read_text())[:50]
    data = "".join(json.dumps(r) + "\n" for r in rows + rows[:10]).encode()
    result = cli("dedupe", "-", str(tmp_path / "out.jsonl"), "--from", "alpaca", stdin=data)
    assert result.returncode == 0, result.stderr
    assert b"dedupe: - -> " in result.stderr and b"read 60 = written 50 + removed 10" in result.stderr
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 50


def test_no_output_may_replace_the_input_or_another_output(tmp_path: Path) -> None:
    source = tmp_path / "in.json"
    source.write_text(ALPACA.read_text())
    before = source.read_bytes()
    with pytest.raises(OverwriteError, match="would overwrite the input"):
        datakit.run("filter", source, source)
    with pytest.raises(OverwriteError, match="would overwrite the input"):
        datakit.run("dedupe", source, tmp_path / "out.json", side_paths={"clusters": source})
    with pytest.raises(OverwriteError, match="would overwrite another output"):
        datakit.run("filter", source, tmp_path / "out.json", side_paths={"rejects": tmp_path / "out.json"})
    assert source.read_bytes() == before


def test_reject_rows_name_the_file_and_line_and_files_follow_the_umask(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    rows = [{"instruction": "Name a colour.", "output": "Blue."}, {"instruction": "Name a colour.", "output": " "}]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = datakit.run("filter", source, tmp_path / "out.jsonl").report
    (reject,) = [json.loads(line) for line in Path(report.side_outputs["rejects"]).read_text().splitlines()]
    assert (reject["file"], reject["line"], reject["rule"]) == (str(source), 2, "empty_response")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "out.jsonl").stat().st_mode) == 0o666 & ~mask


def test_the_report_accounts_for_every_record_or_says_it_is_a_bug() -> None:
    report = pipeline.Report("x", "in", "out", {}, read=10, written=7, removed={"duplicate": 2})
    with pytest.raises(RuntimeError, match="unaccounted"):
        report.check()
    report.removed["duplicate"] = 3
    report.check()
    assert "records: read 10 = written 7 + removed 3" in report.text() and report.to_dict()["removed"] == {
        "duplicate": 3
    }


def test_a_global_step_says_where_its_time_went(tmp_path: Path) -> None:
    """dedupe reads and scans, reduces, writes and finishes: each phase is timed, the phases add
    up to no more than the whole, and the printed time splits into them."""
    report = datakit.run("dedupe", ALPACA, tmp_path / "out.jsonl").report
    assert list(report.phases) == ["scan", "reduce", "write", "finish"]
    assert all(seconds >= 0 for seconds in report.phases.values())
    assert sum(report.phases.values()) <= report.seconds
    report.phases = {"scan": 12.34, "reduce": 5.0, "write": 2.0, "finish": 0.01}
    assert report.text().endswith(f"time: {report.seconds:.1f}s (scan 12.3s, reduce 5.0s, write 2.0s)")
    report.phases = {"process": report.seconds}  # one phase: the total says it all
    assert report.text().endswith(f"time: {report.seconds:.1f}s")


def test_a_bad_row_read_ahead_still_stops_the_step_at_its_line(tmp_path: Path) -> None:
    """The local executor reads the next batch while it scans one: a bad row in a later batch
    still stops the step naming its file and line, and leaves no output and no reader running."""
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [json.dumps({"instruction": f"What is {i} + {i}?", "output": f"{2 * i}."}) for i in range(50)]
    lines[37] = '{"instruction": "What is'
    source.write_text("\n".join(lines) + "\n")
    with pytest.raises(StepError, match=rf"{source}.*\b38\b"):
        datakit.run("dedupe", source, output, executor=pipeline.LocalExecutor(batch_size=10))
    assert not output.exists() and not Path(f"{output}.clusters.jsonl").exists()
    readers = [t for t in threading.enumerate() if t.name == "datakit-read-ahead"]
    assert all(not t.join(5) and not t.is_alive() for t in readers)


def test_reading_ahead_keeps_order_and_stops_with_its_caller() -> None:
    closed = threading.Event()

    def numbers():
        try:
            yield from range(1000)
        finally:
            closed.set()  # where a reader closes its file

    assert list(pipeline.read_ahead(iter(range(7)))) == list(range(7))
    read = pipeline.read_ahead(numbers())
    with closing(read):
        assert [next(read) for _ in range(3)] == [0, 1, 2]
    assert closed.wait(5)


@pytest.mark.parametrize("step", ["filter", "dedupe"])
def test_rows_a_reader_leaves_out_are_counted_in_a_steps_report(step: str, tmp_path: Path) -> None:
    """P3 score_eval rows with a wrong answer are skipped by the reader: a step's report counts
    them, with convert's reason, so the input's rows all add up there as they do in convert."""
    p3 = fixture_path("p3/hellaswag_complete_first_then_score_eval/train/dataset.arrow")
    converted = datakit.convert(p3, tmp_path / "p3.jsonl", to="sharegpt")
    report = datakit.run(step, p3, tmp_path / "out.jsonl").report
    assert converted.rows_skipped > 0
    assert report.read == converted.rows_converted
    assert sum(report.rows_not_records.values()) == converted.rows_skipped
    assert f"input rows that are not records: {converted.rows_skipped}" in report.text()


def test_runs_in_two_threads_leave_the_garbage_collector_as_it_was() -> None:
    """datakit collects reference cycles less often while it makes records (a setting of the
    whole interpreter); two threads whose runs overlap, the first to start ending first, must
    not leave it changed for the rest of the user's program."""
    import gc

    from datakit.record import few_gc_passes

    before = gc.get_threshold()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = []

    def first() -> None:
        with few_gc_passes():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second() -> None:
        first_in.wait(10)
        with few_gc_passes():
            second_in.set()
            first_out.wait(10)
            seen.append(gc.get_threshold())  # the first run has ended; this one still runs

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert seen and seen[0][0] > before[0]
    assert gc.get_threshold() == before
