"""datakit's thin trainer: transformers + peft, readable top to bottom.

- ``train.templates``: chat templates, with the character spans that are trained;
- ``train.labels``: token ids and labels (-100 everywhere but assistant turns and their EOS);
- ``train.batches``: the seeded batch plan, unpacked or packed without cross-attention;
- ``train.checkpoint``: safetensors checkpoints that a killed run resumes from;
- ``train.recipe``: the loop itself, ``fit(config) -> TrainResult``.

    from train import TrainConfig, fit
    result = fit(TrainConfig(data=["data.jsonl"], model="smollm2-135m", out="out/run", max_steps=40))
"""

from train.config import ConfigError, TrainConfig
from train.recipe import TrainError, TrainResult, fit, load_settings

__all__ = ["ConfigError", "TrainConfig", "TrainError", "TrainResult", "fit", "load_settings"]
