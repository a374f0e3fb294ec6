"""The ``evals`` command: run a recipe, rebuild a report, list the shipped tasks."""

from __future__ import annotations

import click

from datakit.commands import Commands
from datakit.errors import DatakitError


@click.group(cls=Commands)
def main() -> None:
    """Measure what each data recipe does to a model."""


@main.command("run")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run folder (default: the recipe's name).")
@click.option("--dry-run", is_flag=True, help="Print the plan and what is cached; do nothing.")
@click.option("--profile", default=None, help="Apply a profile of the recipe (tiny: a few steps and items).")
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="ray: train and evaluate as Ray tasks in parallel (pip install 'datakit[ray]').",
)
@click.option("--address", default=None, help="ray: the cluster's address (default: RAY_ADDRESS or a new local one).")
@click.option(
    "--backend",
    type=click.Choice(["hf", "vllm"]),
    default=None,
    help="Score with lm-eval's transformers model here (hf) or through a vLLM server (default: the recipe's eval.backend, else hf).",
)
def run_command(recipe, out, dry_run, profile, executor, address, backend) -> None:
    """Build, train and score every arm of RECIPE, then write results.md in the run folder."""
    from evals.run import run

    run(recipe, out=out, profile=profile, dry_run=dry_run, executor=executor, address=address, backend=backend)


@main.command("report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def report_command(run_dir) -> None:
    """Rebuild results.json, results.md and the charts of RUN_DIR from its per-item files."""
    from pathlib import Path

    from evals.report import build

    try:
        build(run_dir)
    except DatakitError as exc:
        raise click.ClickException(f"{run_dir}: {exc}") from None
    click.echo((Path(run_dir) / "results.md").read_text())


@main.command("tasks")
def tasks_command() -> None:
    """List the shipped evaluation tasks."""
    from evals.tasks import describe

    for name, about in describe():
        click.echo(f"{name:<16} {about}")


if __name__ == "__main__":
    main()
