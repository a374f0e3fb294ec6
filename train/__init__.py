"""datakit's thin trainer: transformers + peft, readable top to bottom.

- ``train.templates``: chat templates, with the character spans that are trained;
- ``train.labels``: token ids and labels (-100 everywhere but assistant turns and their EOS);
- ``train.batches``: the seeded batch plan, unpacked or packed without cross-attention;
- ``train.checkpoint``: safetensors checkpoints that a killed run resumes from;
- ``train.recipe``: the loop itself, ``fit(config) -> TrainResult``.

    from train import TrainConfig, fit
    result = fit(TrainConfig(data=["data.jsonl"], model="smollm2-135m", out="out/run", max_steps=40))
"""

from train.batches import collate
from train.config import ConfigError, TrainConfig
from train.labels import IGNORE, tokenize
from train.recipe import TrainError, TrainResult, fit, load_settings, token_losses
from train.templates import TEMPLATES, prompt

# the public interface: evals (and users) import these from ``train``, never its modules
__all__ = ["IGNORE", "TEMPLATES", "ConfigError", "TrainConfig", "TrainError", "TrainResult", "collate", "fit",
           "load_settings", "prompt", "token_losses", "tokenize"]  # fmt: skip
