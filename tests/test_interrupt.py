"""Interruption and crash consistency of the long data commands, on real processes.

- Ctrl-C (SIGINT to the whole process group, as a terminal sends it) and SIGTERM (to the main
  process only, as a job scheduler sends it) stop a command within 2 seconds, worker processes
  included, with exit status 130 / 143, no output and no temporary file left behind.
- SIGKILL at random points (KILL_POINTS of each command): whatever is left never looks like a whole
  output unless it is one, and a rerun finishes with the same output as an uninterrupted run,
  removing what the killed run left behind.

Training (tests/test_train.py), synth (tests/test_synth.py) and evals (tests/test_evals.py) have
their own kill-and-resume tests, which check that no work is paid for twice.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.interrupt  # about 4 minutes: its own CI step (pytest -m interrupt)

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT / "tests" / "fixtures" / "formats" / "llama-factory" / "alpaca_en_demo.json"
KILL_POINTS = {"convert (2 worker processes)": 4, "dedupe": 4, "dedupe (2 scan worker processes)": 4, "filter": 4,
               "select": 3}  # fmt: skip
COMMANDS = {
    "convert (2 worker processes)": ["convert", "{input}", "{out}/out.jsonl", "--to", "sharegpt"],
    "dedupe": ["dedupe", "{input}", "{out}/out.jsonl", "--workdir", "{out}/work"],
    "dedupe (2 scan worker processes)": [
        "dedupe",
        "{input}",
        "{out}/out.jsonl",
        "--workdir",
        "{out}/work",
        "--workers",
        "2",
    ],
    "filter": ["filter", "{input}", "{out}/out.jsonl", "--rejects", "{out}/rejected.jsonl"],
    "select": ["select", "{input}", "{out}/out.jsonl", "--method", "random", "--k", "50", "--workdir", "{out}/work"],
}


def make_input(path: Path, rows: int) -> Path:
    """Alpaca records from the LLaMA-Factory demo (see tests/fixtures/SOURCES.md): each demo
    record with a numbered variant of its instruction, and every tenth an exact copy."""
    demo = json.loads(ALPACA.read_text())
    rng = random.Random(0)
    with open(path, "w") as f:
        for i in range(rows):
            row = dict(demo[i % len(demo)])
            if i % 10:
                row["instruction"] = f"{row['instruction']} (variant {i}, {rng.random():.6f})"
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Sized so that each command works for a few seconds: 300k records for convert, 30k for
    dedupe and filter, 500 for select (it embeds every record)."""
    folder = tmp_path_factory.mktemp("interrupt")
    sizes = {"convert": 300_000, "dedupe": 30_000, "filter": 30_000, "select": 500}
    return {name: make_input(folder / f"{name}.jsonl", rows) for name, rows in sizes.items()}


def input_for(name: str, inputs: dict[str, Path]) -> Path:
    return inputs[name.split()[0]]


def command(name: str, input: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "datakit.cli", *(a.format(input=input, out=out) for a in COMMANDS[name])]


def leftovers(folder: Path) -> list[str]:
    """Temporary files and folders under ``folder`` (outputs in progress, tables, parts)."""
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if ".datakit-" in p.name or "datakit-" in p.name
    )


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_until_working(proc: subprocess.Popen, out: Path) -> None:
    """Wait until the command writes its output (a temporary file appears), then a moment more."""
    deadline = time.monotonic() + 30
    while not leftovers(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert proc.poll() is None, f"the command ended before it could be stopped: {proc.stderr.read()[-500:]}"


@pytest.mark.parametrize("name", list(COMMANDS))
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupted_command_stops_within_two_seconds_and_leaves_nothing(
    name: str, how: str, inputs: dict[str, Path], tmp_path: Path
) -> None:
    proc = start(command(name, input_for(name, inputs), tmp_path))
    wait_until_working(proc, tmp_path)
    family = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    stopped = time.monotonic()
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    try:
        status = proc.wait(timeout=2.0)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    took = time.monotonic() - stopped
    gone = psutil.wait_procs([psutil.Process(p) for p in family if psutil.pid_exists(p)], timeout=1.0)[1]
    assert status == (130 if how == "ctrl-c" else 143), proc.stderr.read()
    assert took < 2.0
    assert gone == [], "worker processes outlived the command"
    assert "interrupted" in proc.stderr.read()
    assert not (tmp_path / "out.jsonl").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", list(COMMANDS))
def test_killed_command_leaves_no_partial_output_and_a_rerun_matches(
    name: str, inputs: dict[str, Path], tmp_path: Path
) -> None:
    big_input = input_for(name, inputs)
    reference = tmp_path / "reference"
    reference.mkdir()
    started = time.monotonic()
    subprocess.run(command(name, big_input, reference), check=True, capture_output=True)
    whole_run = time.monotonic() - started
    expected = (reference / "out.jsonl").read_bytes()

    rng = random.Random(name)
    out = tmp_path / "killed"
    for point in range(KILL_POINTS[name]):
        proc = start(command(name, big_input, out))
        time.sleep(rng.uniform(0.3, whole_run))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        result = out / "out.jsonl"
        if result.exists():  # the kill came after the rename: then it is the whole output
            assert result.read_bytes() == expected, f"kill point {point}: a partial output under the final name"
            result.unlink()
    rerun = subprocess.run(command(name, big_input, out), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert (out / "out.jsonl").read_bytes() == expected
    assert leftovers(out) == [], "the rerun did not remove what the killed runs left"
