"""Pytest fixture module (not a test file): a real two-node Ray cluster on this machine.

conftest.py imports the fixture ``ray_cluster`` from here; tests that use it are marked
``@pytest.mark.ray`` (opt in: ``pytest -m ray``). The fixture starts two separate
node processes with the ``ray`` executable of this interpreter's environment:

- head:   ``ray start --head --node-ip-address 127.0.0.1 --port P --num-cpus 1 ...``
- worker: ``ray start --address 127.0.0.1:P --num-cpus 1 --resources {"worker_node": 1}``

waits until ``ray.nodes()`` shows two alive nodes, and yields the address ``"127.0.0.1:P"``.
The driver connection it used for the check is closed before the yield, so the code under test
calls ``ray.init(address=...)`` itself; ``ray.shutdown()`` runs again at teardown in case a test
left one open. The worker node alone carries the custom resource ``worker_node`` so that a test
can force a task onto it (``resources={"worker_node": 1}``); the head node has
``node:__internal_head__``.

Ray rewrites ``--node-ip-address 127.0.0.1`` to the machine's routable address (nodes report
e.g. 192.0.2.2) and its GCS listens on all interfaces; ``ray.init(address="127.0.0.1:P")`` works.

Isolation:
- its own short temp dir (``--temp-dir``; Ray's Unix socket paths live under it and must stay
  under 107 bytes, so not pytest's long tmp_path), removed at teardown;
- ``RAY_USAGE_STATS_ENABLED=0`` and ``--disable-usage-stats``; no dashboard; ``--num-gpus 0``
  (two nodes on one machine would otherwise both claim the same GPUs);
- a fixed object store per node (``--object-store-memory``) instead of 30% of RAM each.

Teardown does NOT run ``ray stop --force``: that command kills every Ray process of this user on
the machine (it matches process names such as ``raylet`` and ``gcs_server``; it has no option to
name a cluster), which would also end another engineer's or another pytest worker's cluster.
Each ``ray start`` runs in a new session instead; Ray's daemons inherit its process group and
session, its workers (``ray::IDLE``, ``ray::fn``) get a process group of their own but keep the
session. Teardown SIGKILLs (as ``--force`` does) every process of those two sessions, plus any
straggler whose command line names this cluster's temp dir.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

NUM_NODES = 2
OBJECT_STORE_BYTES = 256 * 1024 * 1024  # per node; Ray's minimum is 75 MiB
START_TIMEOUT_S = 180.0  # on a busy 2-core machine a node takes several seconds


def _ray_executable() -> Path:
    exe = Path(sys.executable).parent / "ray"
    if not exe.exists():
        raise RuntimeError(f"no ray executable next to {sys.executable} (pip install -e '.[ray]')")
    return exe


def _free_port() -> int:
    # The GCS listens on all interfaces whatever --node-ip-address says, so probe the wildcard.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _short_temp_dir() -> Path:
    base = "/tmp" if os.path.isdir("/tmp") else None  # keep socket paths short whatever TMPDIR is
    return Path(tempfile.mkdtemp(prefix="dkray-", dir=base))


def _node_env() -> dict[str, str]:
    env = dict(os.environ)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"  # for Ray Data run from inside tasks
    return env


def _ray_start(args: list[str], temp_dir: Path, name: str) -> int:
    """Run one ``ray start`` in a new session; return its session id."""
    log = temp_dir / f"ray-start-{name}.log"
    with open(log, "wb") as out:  # a file, not a pipe: the daemons must not hold our pipe open
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_node_env(),
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            rc = None
    if rc != 0:
        _kill_sessions([proc.pid], temp_dir)
        text = log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"`{' '.join(args)}` failed (exit {rc}):\n{text}")
    return proc.pid  # start_new_session: the session id of everything it starts


def _kill_sessions(sids: list[int], temp_dir: Path) -> None:
    import psutil

    mine = os.getpid()
    victims = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid == mine:
            continue
        try:
            in_session = os.getsid(proc.pid) in sids
            names_dir = any(str(temp_dir) in part for part in (proc.info["cmdline"] or []))
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
        if in_session or names_dir:
            victims.append(proc)
    for proc in victims:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    _, alive = psutil.wait_procs(victims, timeout=10)
    if alive:
        raise RuntimeError(f"Ray processes still alive after teardown: {[p.pid for p in alive]}")


def _quiet_driver_init(address: str) -> None:
    import ray
    import ray.data  # first: importing ray.data configures its logger and would undo the setLevel

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)


def _wait_for_nodes(address: str) -> None:
    import ray

    _quiet_driver_init(address)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        alive = [n for n in ray.nodes() if n["Alive"]]
        if len(alive) >= NUM_NODES:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(alive)} of {NUM_NODES} Ray nodes alive after {START_TIMEOUT_S:.0f} s")
        time.sleep(0.5)


@contextlib.contextmanager
def local_cluster() -> Iterator[str]:
    """A fresh two-node Ray cluster (1 CPU per node) for the block; yields ``"127.0.0.1:PORT"``."""
    import ray

    exe = str(_ray_executable())
    temp_dir = _short_temp_dir()
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = [
        "--num-cpus", "1",
        "--num-gpus", "0",
        "--object-store-memory", str(OBJECT_STORE_BYTES),
        "--temp-dir", str(temp_dir),
        "--disable-usage-stats",
    ]  # fmt: skip
    sids: list[int] = []
    try:
        head = [exe, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port)]
        sids.append(_ray_start([*head, "--include-dashboard=false", *common], temp_dir, "head"))
        worker = [exe, "start", "--address", address, "--node-ip-address", "127.0.0.1"]
        resources = json.dumps({"worker_node": 1})
        sids.append(_ray_start([*worker, "--resources", resources, *common], temp_dir, "worker"))
        _wait_for_nodes(address)
        ray.shutdown()  # the code under test makes its own connection
        yield address
    finally:
        ray.shutdown()
        _kill_sessions(sids, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """The address ``"127.0.0.1:PORT"`` of a fresh two-node Ray cluster (1 CPU per node)."""
    pytest.importorskip("ray")
    with local_cluster() as address:
        yield address
