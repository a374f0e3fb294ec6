"""What the machine computes fast: the CPU's bf16 support decides dtype defaults.

Measured on the two CPU kinds these defaults were chosen on (benchmarks/cpu_defaults.py for
training, benchmarks/vllm_scoring.py for vLLM): bf16 weights pay on a CPU only with AMX tiles.
With avx512_bf16 and no AMX (AMD EPYC, and an Intel Xeon whose hypervisor hides AMX) fp32 was
faster, for training and for vLLM's prompt scoring alike. On a GPU bf16 is the fast path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def cpu_flags() -> dict[str, Any]:
    """The CPU's model name and the flags that decide whether bf16 weights pay."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    return {"model": model, "amx_bf16": "amx_bf16" in text, "avx512_bf16": "avx512_bf16" in text}


def cpu_bf16_is_fast() -> bool:
    """Whether bf16 beats fp32 on this CPU (only with AMX tiles; see the module docstring)."""
    return bool(cpu_flags()["amx_bf16"])


MAX_DEFAULT_WORKERS = 8  # worker pools by default: one per core, at most this many (each holds a block)


def default_workers() -> int:
    """How many worker processes a pool gets unless the user says: one per core, with a ceiling."""
    return min(cpu_count(), MAX_DEFAULT_WORKERS)


def cpu_count() -> int:
    """The cores this process may use: its CPU affinity (taskset, cpusets), and a container's CPU
    quota (cgroup v2 ``cpu.max``, as ``docker --cpus`` and Kubernetes limits set it) if lower,
    rounded down: a quota of 1.5 CPUs is one core's work, not two processes' worth."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores
