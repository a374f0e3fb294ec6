"""The ``synth`` step: its settings (client and method in one config) and how it is run."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from datakit.embed import cache_dir
from datakit.options import StepConfig, option
from datakit.pipeline import Processed, SideOutput, WholeSetStep, register
from datakit.synth.client import RESPONSE_FORMATS, Client, ClientSettings
from datakit.synth.methods import GENERATIVE, METHODS


@dataclass
class SynthConfig(StepConfig):
    method: str | None = option(None, "self-instruct, evol, backtranslate (Humpback) or judge (AlpaGasus).",
                                choices=tuple(METHODS), argument=True, required=True)  # fmt: skip
    base_url: str | None = option(None, "An OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1.", required=True)
    model: str | None = option(None, "The model name the server knows.", required=True)
    api_key_env: str = option("OPENAI_API_KEY", "Environment variable holding the key (the key is never logged).")
    concurrency: int = option(2, "Requests in flight at once.", low=1, high=256)
    max_requests: int | None = option(None, "Stop after sending this many requests.", low=0)
    budget_tokens: int | None = option(None, "Stop once this many tokens are used (cached included).", low=0)
    price_per_million: float | None = option(None, "Dollars per million tokens, for the cost estimate.", low=0)
    seed: int = option(0, "Seed of every request (fixed by its place in the run).", low=0, high=2**32 - 1)
    cache: str | None = option(None, "SQLite cache of requests and answers (default: $DATAKIT_CACHE_DIR/synth.sqlite).")
    max_tokens: int = option(256, "Most tokens per answer.", low=1)
    temperature: float = option(0.7, "Sampling temperature.", low=0, high=2)
    threshold: float | None = option(None, "judge: keep >= (default 4.5); backtranslate: (default 4).")
    rounds: int = option(2, "evol and self-instruct rounds.", low=1)
    count: int = option(20, "self-instruct: new instructions to aim for.", low=1)
    json_mode: bool = option(False, "judge: ask for JSON matching a schema (response_format json_schema); a server "
                             "that refuses it is asked for json_object, then plain text.")  # fmt: skip
    timeout: float = option(60.0, "Seconds per request.", low=0, open_range=True)
    max_retries: int = option(4, "Retries of a failed request (429, 5xx, timeouts), with backoff.", low=0,
                              aliases=("--retries",))  # fmt: skip
    backoff: float = option(0.5, "Seconds before the first retry, doubled each retry.", low=0)

    def client_settings(self) -> ClientSettings:
        fields = ClientSettings.__dataclass_fields__
        values = {k: v for k, v in asdict(self).items() if k in fields}
        values["cache"] = self.cache or cache_dir() / "synth.sqlite"
        return ClientSettings(**values)


def _reason_kind(reason: str) -> str:
    """A dropped generation's reason without its numbers and quotes, to count reasons by kind."""
    kind = re.sub(r"'[^']*'|\"[^\"]*\"", "...", reason.split(":")[0])
    return re.sub(r"\d+(\.\d+)?", "N", kind).strip()[:80]


@register
class Synth(WholeSetStep):
    """Make data with an LLM: self-instruct, evol, backtranslate (Humpback) or judge (AlpaGasus).

    Requests and answers are cached, so a run stopped by a budget, a limit or Ctrl-C and started
    again continues where it stopped without paying twice.
    """

    name = "synth"
    Config = SynthConfig
    output_format = "canonical"  # provenance lives in meta
    side_outputs = {"rejects": SideOutput(".rejects.jsonl", "Every dropped generation with its reason.")}

    def transform(self, records: list[dict[str, Any]]) -> Processed:
        config = self.config
        client = Client(config.client_settings(), progress=bool(self.resources.get("progress")))
        result = METHODS[config.method](records, client, config)
        out = Processed(records=result.kept, side={"rejects": result.dropped})
        for drop in result.dropped:
            out.removed[_reason_kind(drop["reason"])] += 1
        if config.method in GENERATIVE:
            self.generative = True
            out.created = len(result.kept) + len(result.dropped)
        elif result.pending:
            out.removed["not judged (stopped early)"] += result.pending
        usage = asdict(client.usage)
        self.figures.update({"generated": result.generated, "parse failures": result.parse_failures,
                             "left undone": result.pending, **{f"requests {k}": v for k, v in usage.items()}})  # fmt: skip
        if config.json_mode:
            self.figures["structured output"] = RESPONSE_FORMATS[client.response_format]
            self.notes += client.format_notes
        if client.cost() is not None:
            self.figures["estimated cost ($)"] = round(client.cost(), 4)
        self.stopped = client.stopped
        return out

    def consumed(self, read: int) -> int:
        """The input of a generating method is its seeds or sources: used, not passed on."""
        return read if self.config.method in GENERATIVE else 0
