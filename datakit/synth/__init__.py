"""``datakit synth``: LLM-made data through any OpenAI-compatible server.

    from datakit.pipeline import run
    report = run("synth", "pairs.jsonl", "judged.jsonl", method="judge",
                 base_url="http://127.0.0.1:8000/v1", model="smollm2-135m").report

Methods: ``self-instruct``, ``evol``, ``backtranslate``, ``judge`` (datakit.synth.methods).
Requests and answers are cached (datakit.synth.client), so a killed run started again
continues where it stopped without sending anything twice. The output (canonical records
with provenance in ``meta``) and the rejects file (every dropped generation with its
reason) are written atomically at the end. The step itself: datakit.synth.step.
"""

from datakit.synth.client import ClientSettings
from datakit.synth.methods import METHODS

__all__ = ["METHODS", "ClientSettings"]
