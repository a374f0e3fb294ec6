"""Shared by the benchmark scripts: run one side in a fresh process and measure it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (Linux /proc), in MB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total / 1024


def run_process(code: str, *args: str, env: dict[str, str] | None = None) -> tuple[str, float]:
    """(stdout of ``python -c code args``, peak resident MB over its process tree, sampled every
    50 ms); ``env`` adds to the environment."""
    environment = {**os.environ, **(env or {})}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=environment)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, tree_rss_mb(proc.pid))
        time.sleep(0.05)
    out = proc.stdout.read()
    if proc.returncode:
        raise SystemExit(f"benchmark side failed with exit code {proc.returncode}")
    return out, peak


def run_side(code: str, *args: str) -> tuple[float, float]:
    """(seconds printed last by ``code``, peak resident MB over its process tree)."""
    out, peak = run_process(code, *args)
    return float(out.strip().splitlines()[-1]), peak


def cpu_name() -> str:
    """The CPU's model name, to print beside every figure (machines here come in two kinds)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"
