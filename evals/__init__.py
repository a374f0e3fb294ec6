"""datakit's benchmark harness: does a data change help, and by how much, beyond noise?

A recipe (YAML) names data arms; ``evals run`` builds each arm's data with datakit's steps,
trains each arm per seed (train/), scores every model with lm-eval on offline tasks plus
``heldout_loss``, and reports per arm and task the mean over seeds, a 95% interval and a paired
bootstrap against the baseline arm.

    from evals import run
    run_dir = run("recipes/quickstart.yaml")
"""

from evals.recipe import RecipeError, load
from evals.report import build as report
from evals.run import run

__all__ = ["RecipeError", "load", "report", "run"]
