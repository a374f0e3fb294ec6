"""The models of a run's evaluation jobs behind vLLM (``eval: {backend: vllm}``).

datakit starts one vLLM server per base model, with every LoRA adapter the run trained on that
model loaded as its own model name (named by its training cache key), so all arms and seeds are
scored by one engine; a fully fine-tuned model gets a server of its own. At most one server runs
at a time (a second base model stops the first: two engines on 2 cores would only slow each
other). With ``eval.server: URL`` the user's server is used instead; adapters it does not list are
loaded through ``/v1/load_lora_adapter``, which needs ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``
on that server.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from datakit.embed import has_cuda
from datakit.models import resolve_llm
from datakit.vllm import VllmError, VllmServer, is_lora, lora_on_logits, post, served_models
from evals.lm import Served

BASE_NAME = "base"


class ServedModels:
    def __init__(self, lora_adapters: dict[str, tuple[str, str]], dtype: str, log_dir: Path, *,
                 server: str | None = None, log: Callable[[str], None] = print) -> None:  # fmt: skip
        """``lora_adapters``: {served name: (base model, adapter folder)} of every trained run."""
        self.lora_adapters, self.dtype, self.log_dir, self.url, self.log = lora_adapters, dtype, log_dir, server, log
        self.running: tuple[str, VllmServer] | None = None  # (the folder it serves, the server)

    def get(self, model: str, adapter: str | None, name: str) -> Served:
        """Where to send requests for ``model`` plus ``adapter`` (``name``: the adapter's served name)."""
        if adapter and Path(adapter, "adapter_config.json").exists() and not is_lora(adapter):
            raise VllmError(
                f"{adapter}: vLLM serves LoRA and rsLoRA adapters only (not DoRA, IA3 or virtual tokens); score this arm with eval.backend hf"
            )
        if self.url:
            return self._users_server(adapter, name)
        full_model = adapter is not None and not is_lora(adapter)
        folder = adapter if full_model else resolve_llm(model)
        if self.running is None or self.running[0] != folder:
            self.close()
            adapters = {} if full_model else self._adapters_of(folder)
            server = VllmServer(folder, BASE_NAME, adapters, dtype=self.dtype, tokenizer=resolve_llm(model),
                                log_file=self.log_dir / f"vllm-{Path(folder).name}.log", log=self.log)  # fmt: skip
            self.running = (folder, server.start())
        server = self.running[1]
        one_at_a_time = lora_on_logits(server.adapters) and not has_cuda()  # see Served.scoring_concurrency
        return Served(server.url, name if adapter and not full_model else BASE_NAME,
                      scoring_concurrency=1 if one_at_a_time else 8)  # fmt: skip

    def _adapters_of(self, base_folder: str) -> dict[str, str]:
        return {name: adapter for name, (model, adapter) in sorted(self.lora_adapters.items())
                if resolve_llm(model) == base_folder and is_lora(adapter)}  # fmt: skip

    def _users_server(self, adapter: str | None, name: str) -> Served:
        assert self.url is not None
        listed = served_models(self.url)
        if not adapter:
            bases = [m["id"] for m in listed if not m.get("parent")]
            if not bases:
                raise VllmError(f"{self.url}: lists no base model")
            return Served(self.url, bases[0])
        if name not in {m["id"] for m in listed}:
            self.log(f"vLLM: loading adapter {name} into {self.url}")
            root = self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url
            # (vLLM answers this route in plain text: "Success: LoRA adapter ... added successfully.")
            try:
                post(f"{root}/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(Path(adapter).resolve())})
            except VllmError as exc:
                if "HTTP 404" not in str(exc):
                    raise
                # vLLM has this route only when runtime LoRA loading is on; say how to turn it on
                raise VllmError(f"{exc}\n  {self.url} cannot load adapters at run time: start vLLM with "
                                f"--enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in its environment, "
                                f"or list this adapter with --lora-modules {name}={Path(adapter).resolve()}") from None  # fmt: skip
        return Served(self.url, name)

    def close(self) -> None:
        if self.running is not None:
            self.running[1].stop()
            self.running = None
