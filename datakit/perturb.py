"""Steps that change data in a known way, for the statistics of an ablation.

- ``shuffle``: the same records in another order. An arm built with it differs from the
  baseline by nothing that should matter: a null arm (an A/A comparison) shows how often the
  harness calls a difference where there is none.
- ``corrupt``: damage of a known kind, so that a recipe can check the harness sees a real
  effect (a positive control).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from datakit.errors import OptionError
from datakit.options import StepConfig, option
from datakit.pipeline import Processed, WholeSetStep, register


@dataclass
class ShuffleConfig(StepConfig):
    seed: int = option(1, "Seed of the new order.", low=0, high=2**32 - 1)


@register
class Shuffle(WholeSetStep):
    """The same records in another order: a null arm's data (an A/A comparison)."""

    name = "shuffle"
    Config = ShuffleConfig

    def transform(self, records: list[dict[str, Any]]) -> Processed:
        order = np.random.default_rng(self.config.seed).permutation(len(records))
        return Processed(records=[records[i] for i in order])


@dataclass
class CorruptConfig(StepConfig):
    shuffle_responses: float = option(0.0, "Share of records whose last answer is handed to another record "
                                      "of that share (right language, wrong answer).", low=0, high=1)  # fmt: skip
    shuffle_words: float = option(0.0, "Share of records whose answers have their words put in random order "
                                  "(broken language).", low=0, high=1)  # fmt: skip
    seed: int = option(0, "Seed of which records are damaged.", low=0, high=2**32 - 1)

    def check(self) -> None:
        if not (self.shuffle_responses or self.shuffle_words):
            raise OptionError("shuffle_responses", "nothing to corrupt: set shuffle_responses or shuffle_words above 0")


def _answers(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in record["messages"] if m["role"] == "assistant" and isinstance(m.get("content"), str)]


@register
class Corrupt(WholeSetStep):
    """Damage of a known kind, so that a recipe can check the harness sees a real effect."""

    name = "corrupt"
    Config = CorruptConfig

    def transform(self, records: list[dict[str, Any]]) -> Processed:
        config = self.config
        rng = np.random.default_rng(config.seed)
        out = [{**r, "messages": [dict(m) for m in r["messages"]]} for r in records]
        with_answer = [i for i, r in enumerate(out) if _answers(r)]
        counts = {"responses swapped": 0, "words shuffled": 0}
        chosen = sorted(rng.choice(with_answer, size=round(config.shuffle_responses * len(with_answer)), replace=False))
        if len(chosen) > 1:  # rotate by one: every chosen record gets another's answer
            last = [_answers(out[i])[-1]["content"] for i in chosen]
            for k, i in enumerate(chosen):
                _answers(out[i])[-1]["content"] = last[k - 1]
            counts["responses swapped"] = len(chosen)
        chosen = rng.choice(with_answer, size=round(config.shuffle_words * len(with_answer)), replace=False)
        words_rng = random.Random(config.seed)
        for i in sorted(chosen):
            for message in _answers(out[i]):
                words = message["content"].split()
                words_rng.shuffle(words)
                message["content"] = " ".join(words)
            counts["words shuffled"] += 1
        self.figures.update(counts)
        return Processed(records=out)
