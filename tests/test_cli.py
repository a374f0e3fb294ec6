"""The datakit command as a user runs it: a real subprocess, real files, stdin and stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, fixture_path

SAMPLE = ROOT / "datakit" / "data" / "alpaca_sample.json"


def datakit(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "datakit.cli", *map(str, args)], input=stdin, capture_output=True, timeout=120
    )


def test_convert_prints_the_summary_and_detection(tmp: Path) -> None:
    out = tmp / "sample.sharegpt.jsonl"
    result = datakit("convert", SAMPLE, out, "--to", "sharegpt")
    assert result.returncode == 0, result.stderr
    err = result.stderr.decode()
    assert "detected alpaca" in err
    source = json.loads(SAMPLE.read_text())
    n = len(source)
    assert f"rows: read {n} = converted {n} + rejected 0 + skipped 0" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == n
    assert rows[0]["conversations"][1] == {"from": "gpt", "value": source[0]["output"]}


def test_bad_input_exits_non_zero_with_file_line_and_reason(tmp: Path) -> None:
    bad = tmp / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    result = datakit("convert", bad, tmp / "out.jsonl", "--to", "sharegpt")
    assert result.returncode != 0
    assert "bad.jsonl:2: missing required field 'output'" in result.stderr.decode()
    assert not (tmp / "out.jsonl").exists()


def test_stdin_to_stdout() -> None:
    data = fixture_path("openai-messages/stock_toolcall_training.jsonl").read_bytes()
    result = datakit("convert", "-", "-", "--to", "sharegpt", "--quiet", stdin=data)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert len(rows) == 86
    assert rows[0]["conversations"][-1]["from"] == "function_call"
    assert json.loads(rows[0]["conversations"][-1]["value"]) == {
        "name": "get_last_nday_stock_price",
        "arguments": {"symbol": "BAC", "period": "1mo"},
    }


def test_inspect_json_reports_roles_empty_turns_and_duplicates(tmp: Path) -> None:
    result = datakit("inspect", fixture_path("axolotl/conversation.missingturns.json"), "--json")
    report = json.loads(result.stdout)
    assert report["format"] == "sharegpt"
    assert report["empty_turns"] == {"assistant": 1}
    doubled = tmp / "doubled.jsonl"
    seeds = fixture_path("stanford-alpaca/seed_tasks.jsonl").read_text()
    instances = sum(len(json.loads(line)["instances"]) for line in seeds.splitlines())
    doubled.write_text(seeds * 2)
    report = json.loads(datakit("inspect", doubled, "--json").stdout)
    assert report["records"] == 2 * instances
    assert report["exact_duplicates"] == instances


def test_dataset_info_entry_lets_llama_factory_find_the_file(tmp: Path) -> None:
    info = tmp / "data" / "dataset_info.json"
    info.parent.mkdir()
    info.write_text(json.dumps({"existing": {"file_name": "x.json"}}))
    out = tmp / "data" / "tools.sharegpt.json"
    glaive = fixture_path("llama-factory/glaive_toolcall_en_demo.json")
    result = datakit("convert", glaive, out, "--to", "sharegpt", "--dataset-info", info, "--dataset-name", "glaive")
    assert result.returncode == 0, result.stderr
    entries = json.loads(info.read_text())
    assert entries["existing"] == {"file_name": "x.json"}
    assert entries["glaive"] == {
        "file_name": "tools.sharegpt.json",
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "system": "system", "tools": "tools"},
    }
    # the same entry LLaMA-Factory ships for this file, apart from the columns it does not use
    shipped = json.loads(fixture_path("llama-factory/dataset_info.json").read_text())["glaive_toolcall_en_demo"]
    assert shipped["columns"].items() <= entries["glaive"]["columns"].items()
    assert json.loads(out.read_text())[0]["conversations"] == json.loads(glaive.read_text())[0]["conversations"]


def test_to_canonical_parquet_has_the_fixed_schema(tmp: Path) -> None:
    import polars as pl

    from datakit import CANONICAL_SCHEMA

    out = tmp / "canonical.parquet"
    glaive = fixture_path("llama-factory/glaive_toolcall_en_demo.json")
    result = datakit("convert", glaive, out, "--to", "canonical")
    assert result.returncode == 0, result.stderr
    frame = pl.read_parquet(out)
    assert frame.schema == CANONICAL_SCHEMA
    assert frame.height == len(json.loads(glaive.read_text()))


def test_outputs_follow_the_umask_and_parquet_is_not_bigger_than_jsonl(tmp: Path) -> None:
    """A new output gets the mode any other program's new file would (0644 under umask 022),
    and Parquet, a compressed columnar format, takes no more room than the same rows as JSONL."""
    sizes = {}
    for suffix in ("jsonl", "parquet"):
        out = tmp / f"sample.{suffix}"
        result = subprocess.run(
            ["sh", "-c", f'umask 022 && exec "{sys.executable}" -m datakit.cli convert {SAMPLE} {out} --to sharegpt'],
            capture_output=True,
        )
        assert result.returncode == 0, result.stderr
        assert out.stat().st_mode & 0o777 == 0o644
        sizes[suffix] = out.stat().st_size
    assert sizes["parquet"] <= sizes["jsonl"]


def test_a_bug_is_one_line_that_says_so_with_the_traceback_in_a_log(tmp: Path, monkeypatch) -> None:
    """An internal error (here a reader that breaks, a fault that cannot be produced for real
    without a bug) is one line naming it as a bug in datakit and the log file with the traceback."""
    import importlib

    from click.testing import CliRunner

    from datakit.cli import main

    convert_module = importlib.import_module("datakit.convert")  # (datakit.convert is also the function)

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(convert_module, "open_records", broken)
    monkeypatch.setenv("DATAKIT_LOG_DIR", str(tmp / "logs"))
    result = CliRunner().invoke(main, ["convert", str(SAMPLE), str(tmp / "out.jsonl"), "--to", "sharegpt"])
    assert result.exit_code == 70  # EX_SOFTWARE: not the user's doing
    line = result.output.strip()
    assert "\n" not in line and "bug in datakit" in line and "ZeroDivisionError" in line
    log = next((tmp / "logs").glob("bug-*.log"))
    assert str(log) in line and "Traceback" in log.read_text() and "Traceback" not in result.output


def test_ctrl_c_inside_code_run_by_exec_still_exits_130(tmp: Path) -> None:
    """Ctrl-C that lands while Python runs code built from a string (dataclasses and namedtuple
    make their methods that way, so a lazy import of torch does it often) ends the command with
    "interrupted" and exit status 130 under ``python -m``, not with the process killed by SIGINT:
    CPython up to 3.13 remembers such a KeyboardInterrupt even once it has been caught."""
    (tmp / "exec_command.py").write_text(
        "import click\n"
        "from datakit.commands import Commands\n"
        "@click.group(cls=Commands)\n"
        "def main():\n"
        "    pass\n"
        "@main.command()\n"
        "def work():\n"
        "    exec('import os, signal, time\\nos.kill(os.getpid(), signal.SIGINT)\\ntime.sleep(30)')\n"
        "if __name__ == '__main__':\n"
        "    main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "exec_command", "work"],
        capture_output=True,
        text=True,
        cwd=tmp,
        timeout=60,
    )
    assert result.returncode == 130, result.stderr
    assert result.stderr.startswith("interrupted:") and "Traceback" not in result.stderr
