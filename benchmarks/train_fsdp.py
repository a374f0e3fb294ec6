"""Memory of a full fine-tune over two processes: each holding the whole model (data-parallel)
against FSDP (``--fsdp``: weights, gradients and Adam state sharded), peak resident memory of
each process and wall time, with torchrun and gloo on this CPU.

    python benchmarks/train_fsdp.py [--model smollm2-135m] [--steps 4]

The model's training state is 4 copies of its weights in fp32 (weights, gradients, Adam's two
moments): 2.2 GB for the 135M default, which FSDP halves per process. What the process keeps
beyond that depends on the C allocator: glibc keeps the memory of FSDP's per-layer gathers
unless told to return it, so the script runs each setting twice, with glibc's defaults and with
``MALLOC_MMAP_THRESHOLD_=65536`` (large blocks go back to the system when freed).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from _measure import cpu_name

RETURN_FREED = {"MALLOC_ARENA_MAX": "1", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_MMAP_THRESHOLD_": "65536"}


def run(data: Path, out: Path, args: argparse.Namespace, fsdp: bool, env: dict[str, str]) -> tuple[float, list[float]]:
    """(seconds, peak resident GB of each training process, largest first)."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "datakit.cli", "train", "--data", str(data), "--model", args.model, "--full",
               "--max-steps", str(args.steps), "--save-every", "1000", "--batch-size", "2", "--max-length", "96",
               "--dtype", "fp32", "--threads", "1", "--no-gradient-checkpointing", "--quiet", "--out", str(out),
               *(["--fsdp"] if fsdp else [])]  # fmt: skip
    started = time.perf_counter()
    log = out.with_suffix(".log")
    with open(log, "w") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr,
                                env={**os.environ, "OMP_NUM_THREADS": "1", **env})  # fmt: skip
        peaks: dict[int, int] = {}
        while proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):  # (a process that has just ended)
                    peaks[child.pid] = max(peaks.get(child.pid, 0), child.memory_info().rss)
            time.sleep(0.1)
    if proc.returncode != 0:
        raise SystemExit(f"training failed:\n{log.read_text()[-3000:]}")
    workers = sorted(peaks.values(), reverse=True)[:2]  # (the torchrun agent is the smallest)
    return time.perf_counter() - started, [round(v / 1e9, 2) for v in workers]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    import datakit

    work = Path(tempfile.mkdtemp(prefix="train-fsdp-"))
    try:
        data = work / "data.jsonl"
        sample = Path(datakit.__file__).parent / "data" / "alpaca_sample.json"
        datakit.write_records(list(datakit.read_records(sample))[:16], data, to="sharegpt")
        print(
            f"CPU: {cpu_name()}; full fine-tune of {args.model}, 2 gloo processes, fp32, {args.steps} steps of 4 x 96"
        )
        for allocator, env in (("glibc defaults", {}), ("glibc returning freed memory", RETURN_FREED)):
            for fsdp in (False, True):
                seconds, peaks = run(data, work / "out", args, fsdp, env)
                name = "FSDP" if fsdp else "data-parallel"
                print(f"  {allocator:<30} {name:<14} {seconds:6.0f} s   peak GB per process: {peaks}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
