"""``datakit synth``: LLM-made data through any OpenAI-compatible server.

    from datakit.synth import synth, ClientSettings, MethodSettings
    summary = synth("judge", "pairs.jsonl", "judged.jsonl",
                    ClientSettings(base_url="http://127.0.0.1:8000/v1", model="smollm2-135m", cache="synth.sqlite"))

Methods: ``self-instruct``, ``evol``, ``backtranslate``, ``judge`` (datakit.synth.methods).
Requests and answers are cached (datakit.synth.client), so a killed run started again
continues where it stopped without sending anything twice. The output (canonical records
with provenance in ``meta``) and the rejects file (every dropped generation with its
reason) are written atomically at the end.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from datakit.convert import read_records
from datakit.io import RowWriter
from datakit.record import CANONICAL_SCHEMA
from datakit.synth.client import Client, ClientSettings
from datakit.synth.methods import METHODS, MethodResult, MethodSettings

__all__ = ["ClientSettings", "MethodSettings", "Summary", "synth"]


@dataclass
class Summary:
    method: str
    input: str
    output: str
    rejects: str
    read: int = 0
    generated: int = 0
    kept: int = 0
    dropped: int = 0
    parse_failures: int = 0
    pending: int = 0
    stopped: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    cost: float | None = None
    seconds: float = 0.0

    def text(self) -> str:
        u = self.usage
        lines = [
            f"{self.method}: {self.input} -> {self.output}",
            f"records read {self.read}; generated {self.generated}, kept {self.kept}, dropped {self.dropped}"
            + (f" with reasons in {self.rejects}" if self.dropped else ""),
            f"parse failures (kept in the rejects file): {self.parse_failures}",
            f"requests: {u['answered']} answered now, {u['cached']} from the cache, {u['failed']} failed, "
            f"{u['retries']} retries; tokens {u['prompt_tokens'] + u['completion_tokens']:,} "
            f"(prompt {u['prompt_tokens']:,}, completion {u['completion_tokens']:,}); paid now {u['new_tokens']:,}",
        ]
        if self.cost is not None:
            lines.append(f"estimated cost of this run: ${self.cost:.4f}")
        if self.stopped:
            lines.append(f"stopped early ({self.stopped}): {self.pending} left undone; run again to continue")
        lines.append(f"time: {self.seconds:.1f}s")
        return "\n".join(lines)


def synth(
    method: str,
    input: str | Path,
    output: str | Path,
    client_settings: ClientSettings,
    settings: MethodSettings | None = None,
    *,
    rejects: str | Path | None = None,
    from_format: str | None = None,
    progress: bool = False,
) -> Summary:
    if method not in METHODS:
        raise ValueError(f"unknown synth method {method!r}; methods: {', '.join(METHODS)}")
    settings = settings or MethodSettings()
    started = time.perf_counter()
    records = list(read_records(input, from_format))
    client = Client(client_settings, progress=progress)
    result: MethodResult = METHODS[method](records, client, settings)
    rejects = rejects or f"{output}.rejects.jsonl"
    with RowWriter(output, CANONICAL_SCHEMA) as writer:
        for record in result.kept:
            writer.write(record)
    with RowWriter(rejects, CANONICAL_SCHEMA, kind="jsonl") as bad:
        for drop in result.dropped:
            bad.write(drop)
    summary = Summary(method, str(input), str(output), str(rejects), read=len(records), generated=result.generated,
                      kept=len(result.kept), dropped=len(result.dropped), parse_failures=result.parse_failures,
                      pending=result.pending, stopped=client.stopped, usage=asdict(client.usage), cost=client.cost())  # fmt: skip
    summary.seconds = time.perf_counter() - started
    return summary
