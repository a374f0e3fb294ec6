"""A global step's scan of a JSON-lines file, run in worker processes (one per core).

Why processes: reading rows into canonical records and encoding the output rows is Python that
holds the GIL (about 40 us a record), so a thread that reads ahead (pipeline.read_ahead) only
overlaps it with the scan's compiled parts, and a dedupe uses 1.2 to 1.5 of two cores. Here each
worker reads, converts, encodes and scans whole blocks of lines on its own, one thread each.

A record's position (its global id) is only known once every row before it is read: blank lines
and rows that hold no record (a P3 wrong answer) take none. So each block goes in two halves:

    driver -> worker   a block of lines (a byte range of the file) and the number of its first line
    worker -> driver   ("parsed", how many records it holds, rows that hold none, or a bad row)
    worker             encodes the output rows, which needs no position, while it waits
    driver -> worker   the block's first position, once every block before it is parsed
    worker             scans the batch and writes its tables and encoded rows as parts named
                       by that position, exactly as the local executor's thread does
    worker -> driver   ("done",)

Blocks are handed out in file order and a worker holds one at a time, so the earliest block not
yet parsed is always being parsed: nothing waits forever. A bad row is raised in file order (the
first one in the file, as a serial read finds it), with the same message.

Workers are fresh interpreters (``python -m datakit.scan_workers``), not forks: polars and numba
keep thread pools that a fork would copy half-made. They run in a process group of their own, so
Ctrl-C reaches the driver only, which stops them; they die with it if it is killed (Linux), and
stop when their pipe from it closes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import datakit
from datakit import formats
from datakit.errors import StepError
from datakit.formats import ReadOptions
from datakit.io import block_rows, line_blocks

BLOCK_BYTES = 32 << 20  # input bytes a worker takes at a time: a batch of about 40k typical records
# one thread per worker: the workers are the parallelism, and more threads would only contend
WORKER_THREADS = {"POLARS_MAX_THREADS": "1", "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


@dataclass
class Setup:
    """What every worker needs, sent once: the step to scan with and where its tables go."""

    step_class: type
    config: Any
    paths: dict[str, str]
    tables_root: str
    buckets: int
    file: str
    format: str
    read_options: ReadOptions
    encoder: Callable | None  # pipeline.RowEncoder, or None when the output rows are not made while scanning
    encoded_rows: str  # the table name of the encoded rows


def scan_in_workers(setup: Setup, workers: int, block_bytes: int = BLOCK_BYTES,
                    not_records: dict[str, int] | None = None) -> int:  # fmt: skip
    """Scan ``setup.file`` with ``workers`` processes; return how many records it holds. Rows
    that hold no record are counted in ``not_records``."""
    pool: list[Worker] = []
    try:
        for _ in range(workers):
            pool.append(Worker.start(setup))
        idle = list(pool)
        running: dict[Connection, Worker] = {}
        parsed: dict[int, tuple[Worker, int, dict[str, int], str | None]] = {}
        blocks = enumerate(line_blocks(setup.file, block_bytes))
        next_block, position, more = 0, 0, True
        while True:
            while idle and more:  # hand out blocks in file order
                item = next(blocks, None)
                if item is None:
                    more = False
                    break
                worker = idle.pop()
                worker.number, (block, first_line) = item
                worker.send((block, first_line))
                running[worker.inbox] = worker
            if not running:
                return position
            for connection in wait(list(running)):
                worker = running[connection]
                message = worker.receive()
                if message[0] == "parsed":
                    parsed[worker.number] = (worker, *message[1:])
                elif message[0] == "done":
                    del running[connection]
                    idle.append(worker)
            while next_block in parsed:  # positions, in file order, as blocks before them are parsed
                worker, count, rows_not_records, bad_row = parsed.pop(next_block)
                if bad_row is not None:
                    raise StepError(bad_row)
                if not_records is not None:
                    for reason, n in rows_not_records.items():
                        not_records[reason] = not_records.get(reason, 0) + n
                worker.send(position)
                position += count
                next_block += 1
    finally:
        for worker in pool:
            worker.stop()


class Worker:
    """The driver's handle on one worker process: its process and the two ends of its pipes."""

    def __init__(self, process: subprocess.Popen, outbox: Connection, inbox: Connection):
        self.process = process
        self.outbox = outbox  # driver -> worker
        self.inbox = inbox  # worker -> driver
        self.number = -1  # the block it holds

    @classmethod
    def start(cls, setup: Setup) -> Worker:
        worker_reads, driver_writes = os.pipe()
        driver_reads, worker_writes = os.pipe()
        # the package this process imported, found first, whatever the worker's working folder
        path = [str(Path(datakit.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, **WORKER_THREADS, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "datakit.scan_workers", str(worker_reads), str(worker_writes), str(os.getpid())],
                pass_fds=(worker_reads, worker_writes),
                env=env,
                process_group=0,  # Ctrl-C at a terminal reaches the driver only, which stops the workers
                stdin=subprocess.DEVNULL,
            )
        finally:
            os.close(worker_reads)
            os.close(worker_writes)
        worker = cls(process, Connection(driver_writes, readable=False), Connection(driver_reads, writable=False))
        worker.outbox.send_bytes(pickle.dumps(setup))
        return worker

    def send(self, message: Any) -> None:
        self.outbox.send(message)

    def receive(self) -> tuple:
        """The worker's next message; its error, raised here; or why it ended."""
        try:
            message = self.inbox.recv()
        except (EOFError, OSError):
            code = self.process.wait()
            raise RuntimeError(f"a scan worker process ended unexpectedly (exit status {code})") from None
        if message[0] == "failed":
            raise message[1]
        return message

    def stop(self) -> None:
        """End the worker now (it may be in the middle of a block: the driver is giving up)."""
        for end in (self.outbox, self.inbox):
            end.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


# --- the worker process ------------------------------------------------------------------


def serve(inbox: Connection, outbox: Connection) -> None:
    """A worker's life: the setup, then blocks until the driver closes the pipe."""
    from datakit.pipeline import Batch, Tables, records_of

    setup: Setup = pickle.loads(inbox.recv_bytes())
    step = setup.step_class(setup.config, setup.paths)
    tables = Tables(setup.tables_root, step.shuffle, setup.buckets)
    reader = formats.get(setup.format)
    while True:
        try:
            block, first_line = inbox.recv()
        except EOFError:
            return
        rows_not_records: dict[str, int] = {}
        try:
            outcomes = reader.read(block_rows(setup.file, block, first_line), setup.read_options)
            read = list(records_of(outcomes, rows_not_records))
        except StepError as exc:  # a bad row: the driver raises it when its block's turn comes
            outbox.send(("parsed", 0, {}, str(exc)))
            continue
        outbox.send(("parsed", len(read), rows_not_records, None))
        records = [record for record, _ in read]
        rows = setup.encoder(records) if setup.encoder is not None and records else None
        start = inbox.recv()
        if records:
            batch = Batch(records, start, [location for _, location in read])
            for name, frame in step.scan(batch).items():
                tables.write(name, frame, f"{start:012d}")
            if rows is not None:
                tables.write(setup.encoded_rows, rows, f"{start:012d}")
        outbox.send(("done",))


def _die_with(driver: int) -> None:
    """Linux: the kernel kills this process when the driver dies, however it dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (AttributeError, OSError):
        return
    if os.getppid() != driver:  # it died before that took hold
        os._exit(1)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when to stop
    _die_with(int(sys.argv[3]))
    inbox = Connection(int(sys.argv[1]), writable=False)
    outbox = Connection(int(sys.argv[2]), readable=False)
    try:
        serve(inbox, outbox)
    except BaseException as exc:  # handed to the driver, which raises it as if it were its own
        try:
            pickle.dumps(exc)
        except Exception:
            exc = RuntimeError(f"in a scan worker: {''.join(traceback.format_exception(exc))}")
        with contextlib.suppress(OSError):  # the driver is gone: nobody to tell
            outbox.send(("failed", exc))


if __name__ == "__main__":
    main()
