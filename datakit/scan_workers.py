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

Workers are fresh interpreters with the driver's ``sys.path`` (as multiprocessing's spawn makes
them), not forks: polars and numba keep thread pools that a fork would copy half-made. They run
in a session of their own, so Ctrl-C at a terminal reaches the driver only, which stops them;
they die with it if it is killed (Linux), and stop when their pipe from it closes.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import os
import pickle
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from datakit import formats
from datakit.errors import StepError
from datakit.formats import ReadOptions
from datakit.io import block_rows, line_blocks

BLOCK_BYTES = 32 << 20  # input bytes a worker takes at a time: a batch of about 40k typical records
# one thread per worker: the workers are the parallelism, and more threads would only contend
WORKER_THREADS = {"POLARS_MAX_THREADS": "1", "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
# Each block allocates and frees the same few hundred MB again. By default glibc gives freed
# memory back to the system at once (above its trim threshold), and the next block faults every
# page in again: a worker spent a sixth of its time in the kernel. Kept, the memory is reused; a
# worker holds what its largest block needed, which it held at that block anyway. (glibc's mmap
# threshold cannot go above 32 MB.) Settings the user's environment already has win.
#
# Polars' jemalloc the same way: ``import polars`` sets _RJEM_MALLOC_CONF to give freed pages
# back after half a second, less than a block takes, so every block faulted its polars memory in
# again. Kept for five seconds (two or three blocks), on benchmarks/dedupe_scale.py's 1M records
# (alternating runs, Intel Xeon with AMX) the workers' page faults fell from 1.83-1.88M to
# 1.19-1.26M, the dedupe's CPU from 47.6-47.9 s to 46.6-46.7 and its scan from 19.3-19.4 s to
# 18.5-18.6. Keeping it for good (dirty_decay_ms:-1 with oversize_threshold:0) made 10M records slower:
# 308 s against 297, at a peak of 9.0 GB against 8.6.
WORKER_ALLOCATORS = {
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_TOP_PAD_": str(256 << 20),
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
}
POLARS_JEMALLOC = "dirty_decay_ms:500,muzzy_decay_ms:1000"  # what ``import polars`` puts first
WORKER_JEMALLOC = "dirty_decay_ms:5000,muzzy_decay_ms:5000"


def worker_jemalloc(current: str | None) -> str:
    """A worker's _RJEM_MALLOC_CONF, from the driver's (``current``): the worker's polars puts its
    own setting first, and the later of two options wins, so WORKER_JEMALLOC comes next and what
    the user set (the driver's, less polars' own) last."""
    user = (current or "").removeprefix(POLARS_JEMALLOC).lstrip(",")
    return ",".join(part for part in (WORKER_JEMALLOC, user) if part)


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
    batch_size: int  # records a scan takes at a time (a block of short rows holds more)


def run_scan(setup: Setup, workers: int, block_bytes: int = BLOCK_BYTES,
             not_records: dict[str, int] | None = None) -> None:  # fmt: skip
    """Scan ``setup.file`` with ``workers`` processes. Rows that hold no record are counted in
    ``not_records``. Workers are started and stopped by the calling thread (their parent-death
    signal is tied to the thread that started them)."""
    pool: list[Worker] = []
    ok = False
    try:
        for _ in range(workers):
            pool.append(Worker.start())
            pool[-1].send_setup(setup)
        idle = list(pool)
        running: dict[Connection, Worker] = {}
        # block number -> (worker, records, rows that hold none, the bad row) or the error reading it
        parsed: dict[int, tuple | BaseException] = {}
        blocks = enumerate(line_blocks(setup.file, block_bytes))
        dispatched, next_block, position, more = 0, 0, 0, True
        while True:
            while idle and more:  # hand out blocks in file order
                try:
                    item = next(blocks, None)
                except Exception as exc:  # a damaged gzip: raised after the blocks before it
                    parsed[dispatched] = exc
                    item = None
                if item is None:
                    more = False
                    break
                worker = idle.pop()
                worker.block, (block, first_line) = item
                worker.send((block, first_line))
                running[worker.inbox] = worker
                dispatched += 1
            if not running and next_block not in parsed:
                ok = True
                return
            for connection in wait(list(running)) if running else []:
                worker = running[connection]
                message = worker.receive()
                if message[0] == "parsed":
                    parsed[worker.block] = (worker, *message[1:])
                elif message[0] == "done":
                    del running[connection]
                    idle.append(worker)
            while next_block in parsed:  # positions, in file order, as blocks before them are parsed
                entry = parsed.pop(next_block)
                if isinstance(entry, BaseException):
                    raise entry
                worker, count, rows_not_records, bad_row = entry
                if bad_row is not None:
                    raise StepError(bad_row)
                if not_records is not None:
                    for reason, n in rows_not_records.items():
                        not_records[reason] = not_records.get(reason, 0) + n
                worker.send(position)
                position += count
                next_block += 1
    finally:
        stop(pool, finished=ok)


def stop(pool: list[Worker], finished: bool) -> None:
    """End the workers: after a finished scan, by closing their pipes (they are idle and exit);
    otherwise at once (the driver is giving up, and they may be in the middle of a block). Every
    one is signalled before any is waited for."""
    for worker in pool:
        worker.outbox.close()
        if not finished and worker.process.poll() is None:
            worker.process.kill()
    deadline = time.monotonic() + 5
    for worker in pool:
        try:
            worker.process.wait(timeout=max(0.0, deadline - time.monotonic()) if finished else None)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()
        worker.inbox.close()


# the worker's sys.path is the driver's, set before anything else is imported (a json.py in the
# working folder must not shadow the standard library's): argv is fds, driver pid, then the path
LAUNCH = "import sys; sys.path[:] = sys.argv[4:]; from datakit.scan_workers import main; main()"


class Worker:
    """The driver's handle on one worker process: its process and the two ends of its pipes."""

    def __init__(self, process: subprocess.Popen, outbox: Connection, inbox: Connection):
        self.process = process
        self.outbox = outbox  # driver -> worker
        self.inbox = inbox  # worker -> driver
        self.block = -1  # the number of the block it holds

    @classmethod
    def start(cls) -> Worker:
        path = [p for p in sys.path if isinstance(p, str)]  # (the import system skips any other entry)
        worker_reads, driver_writes = os.pipe()
        outbox = Connection(driver_writes, readable=False)
        try:
            driver_reads, worker_writes = os.pipe()
        except OSError:
            outbox.close()
            os.close(worker_reads)
            raise
        inbox = Connection(driver_reads, writable=False)
        try:
            process = subprocess.Popen(
                [python_executable(), "-c", LAUNCH, str(worker_reads), str(worker_writes), str(os.getpid()), *path],
                pass_fds=(worker_reads, worker_writes),
                env={
                    **WORKER_ALLOCATORS,
                    **os.environ,
                    **WORKER_THREADS,
                    "_RJEM_MALLOC_CONF": worker_jemalloc(os.environ.get("_RJEM_MALLOC_CONF")),
                },  # fmt: skip
                start_new_session=True,  # Ctrl-C at a terminal reaches the driver only, which stops the workers
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # the driver's stdout may be the output (``-``)
            )
        except BaseException:
            outbox.close()
            inbox.close()
            raise
        finally:
            os.close(worker_reads)
            os.close(worker_writes)
        return cls(process, outbox, inbox)

    def send_setup(self, setup: Setup) -> None:
        self.send_bytes(pickle.dumps(setup))

    def send(self, message: Any) -> None:
        self.send_bytes(pickle.dumps(message))

    def send_bytes(self, data: bytes) -> None:
        try:
            self.outbox.send_bytes(data)
        except OSError:  # the worker is gone: its own error if it sent one, else why; not "broken pipe"
            if self.inbox.poll():
                self.receive()
            raise self.ended() from None

    def receive(self) -> tuple:
        """The worker's next message; its error, raised here; or why it ended."""
        try:
            message = self.inbox.recv()
        except (EOFError, OSError):
            raise self.ended() from None
        if message[0] == "failed":
            raise message[1]
        return message

    def ended(self) -> RuntimeError:
        code = self.process.wait()
        how = f"killed by signal {-code} ({signal.strsignal(-code)})" if code < 0 else f"exit status {code}"
        hint = "; out of memory? --workers 1 scans in one process" if code == -signal.SIGKILL else ""
        return RuntimeError(f"a scan worker process ended unexpectedly ({how}){hint}")


def python_executable() -> str:
    """The interpreter to start workers with (as multiprocessing's spawn finds it)."""
    from multiprocessing import spawn

    return spawn.get_executable() or ""


# --- the worker process ------------------------------------------------------------------


def serve(inbox: Connection, outbox: Connection) -> None:
    """A worker's life: the setup, then blocks until the driver closes the pipe.

    Python's cyclic garbage collector is off while a block is read and scanned, and looks at
    what the block left behind once it is done. A block's 40k records hold no reference cycles
    and live until it is scanned, yet collections (even few_gc_passes' fewer ones) went over
    them again and again: 1.2 us of the 10 us it takes to read a record (Intel Xeon with AMX).
    After a block few of its objects are alive, so looking at them costs little, and a cycle a
    block made (none is known) is still freed. Every 16th block the collector looks at every
    object, for a cycle among those older than a block: about 40 ms in a dedupe worker, whose
    blocks take a second or two each."""
    gc.disable()
    _serve(inbox, outbox)


def _serve(inbox: Connection, outbox: Connection) -> None:
    from datakit.pipeline import Tables

    setup: Setup = pickle.loads(inbox.recv_bytes())
    step = setup.step_class(setup.config, setup.paths)
    tables = Tables(setup.tables_root, step.shuffle, setup.buckets)
    for blocks in itertools.count(1):
        try:
            block, first_line = inbox.recv()
        except EOFError:
            return
        _scan_block(setup, step, tables, block, first_line, inbox, outbox)
        # the young generations (the block's objects, nearly all freed by now), now and then all
        gc.collect(2 if blocks % 16 == 0 else 1)


def _scan_block(setup: Setup, step: Any, tables: Any, block: Any, first_line: int,
                inbox: Connection, outbox: Connection) -> None:  # fmt: skip
    """Read one block's records, tell the driver how many, and scan them from the position it sends."""
    from datakit.pipeline import Batch, records_of, scan_into

    rows_not_records: dict[str, int] = {}
    try:
        outcomes = formats.get(setup.format).read(block_rows(setup.file, block, first_line), setup.read_options)
        read = list(records_of(outcomes, rows_not_records))
    except StepError as exc:  # a bad row: the driver raises it when its block's turn comes
        outbox.send(("parsed", 0, {}, str(exc)))
        return
    outbox.send(("parsed", len(read), rows_not_records, None))
    records = [record for record, _ in read]
    locations = [location for _, location in read]
    rows = setup.encoder(records) if setup.encoder is not None and records else None
    start = inbox.recv()
    for offset in range(0, len(records), setup.batch_size):  # parts as the local executor cuts them
        end = offset + setup.batch_size
        batch = Batch(records[offset:end], start + offset, locations[offset:end])
        scan_into(tables, step, batch, None if rows is None else rows.slice(offset, setup.batch_size))
    outbox.send(("done",))


def _die_with(driver: int) -> None:
    """Linux: the kernel kills this process when the driver's thread that started it ends, however
    it ends (run_scan starts and stops workers in one call, on one thread)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (AttributeError, OSError):
        return
    if os.getppid() != driver:  # it died before that took hold
        os._exit(1)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when to stop
    inbox_fd, outbox_fd, driver = (int(a) for a in sys.argv[1:4])
    _die_with(driver)
    inbox = Connection(inbox_fd, writable=False)
    outbox = Connection(outbox_fd, readable=False)
    try:
        serve(inbox, outbox)
    except BaseException as exc:  # handed to the driver, which raises it as if it were its own
        with contextlib.suppress(OSError):  # the driver is gone: nobody to tell
            outbox.send(("failed", transferable(exc)))
        sys.exit(1)  # a failure is never an exit status of 0


def transferable(exc: BaseException) -> BaseException:
    """``exc`` if the driver can rebuild it and it is the user's (a DatakitError: its message is
    the whole story); otherwise a RuntimeError carrying the worker's traceback, for the bug log."""
    from datakit.errors import DatakitError

    if isinstance(exc, DatakitError):
        try:
            pickle.loads(pickle.dumps(exc))
            return exc
        except Exception:
            pass
    return RuntimeError(f"in a scan worker process:\n{''.join(traceback.format_exception(exc))}")
