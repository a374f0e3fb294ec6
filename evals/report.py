"""The report of a run, rebuilt from its per-item files: results.json, results.md and charts.

``evals report RUN_DIR`` calls ``build`` again, so the numbers can always be traced back to
``items/<arm>/<run>/<task>.jsonl``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from evals.stats import estimate, paired_delta
from evals.tasks import HELDOUT


def read_items(path: Path) -> dict[int, tuple[float, float]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {int(r["item"]): (float(r["num"]), float(r["den"])) for r in rows}


def matrices(run_dir: Path, arm: str, runs: list[str], task: str, items: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(num, den) as runs x items, in the order of ``items``."""
    num, den = np.zeros((len(runs), len(items))), np.zeros((len(runs), len(items)))
    for r, run in enumerate(runs):
        values = read_items(run_dir / "items" / arm / run / f"{task}.jsonl")
        for c, item in enumerate(items):
            num[r, c], den[r, c] = values[item]
    return num, den


def common_items(run_dir: Path, info: dict[str, Any], task: str) -> list[int]:
    """Items every run of every arm has (they are the same unless a run was cut short)."""
    sets = [set(read_items(run_dir / "items" / arm / run / f"{task}.jsonl"))
            for arm in info["arms"] for run in info["runs"][arm]]  # fmt: skip
    return sorted(set.intersection(*sets))


def lower_is_better(task: str) -> bool:
    return task == HELDOUT


def build(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    baseline, replicates = info["baseline"], info["replicates"]
    results: dict[str, Any] = {"recipe": info["recipe"], "baseline": baseline, "tasks": {}, "arms": {}}
    for task in info["tasks"]:
        items = common_items(run_dir, info, task)
        base = matrices(run_dir, baseline, info["runs"][baseline], task, items)
        results["tasks"][task] = {"metric": info["metrics"].get(task), "items": len(items),
                                  "lower_is_better": lower_is_better(task)}  # fmt: skip
        for arm in info["arms"]:
            num, den = matrices(run_dir, arm, info["runs"][arm], task, items)
            entry = {"estimate": estimate(num, den, replicates).to_dict(), "runs": info["runs"][arm]}
            if arm != baseline:
                entry["delta"] = paired_delta(num, den, *base, replicates=replicates).to_dict()
            results["arms"].setdefault(arm, {})[task] = entry
    results["heldout"] = info.get("heldout")
    results["timings"] = stage_totals(info["timings"])
    results["versions"] = info["versions"]
    _write(run_dir / "results.json", json.dumps(results, indent=1))
    _write(run_dir / "results.md", markdown(results, info))
    delta_chart(results, run_dir / "deltas.png")
    loss_chart(run_dir, run_dir / "loss.png")
    return results


def stage_totals(timings: list[dict[str, Any]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for t in timings:
        if t["seconds"] is not None:
            totals[t["stage"]] = round(totals.get(t["stage"], 0.0) + t["seconds"], 1)
    return totals


def _fmt(e: dict[str, Any]) -> str:
    return f"{e['mean']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"


def markdown(results: dict[str, Any], info: dict[str, Any]) -> str:
    tasks = list(results["tasks"])
    lines = [f"# {results['recipe']}", ""]
    lines.append(f"Model {info['model']}, seeds {info['seeds']}, baseline arm **{results['baseline']}**. "
                 "Each cell: mean over seeds [95% bootstrap interval over items and seeds]; below it, the "
                 "paired difference from the baseline [95% interval]. **\\*** marks a difference whose "
                 "interval excludes zero.")  # fmt: skip
    if len(info["seeds"]) == 1:
        lines.append("")
        lines.append("With one seed the intervals cover item sampling only; the spread between training runs is "
                     "not measured (add seeds to include it).")  # fmt: skip
    lines.append("")
    header = "| arm | " + " | ".join(
        f"{t} ({results['tasks'][t]['metric']}{', lower is better' if results['tasks'][t]['lower_is_better'] else ''}, "
        f"n={results['tasks'][t]['items']})"
        for t in tasks
    )  # fmt: skip
    lines += [header + " |", "|---" * (len(tasks) + 1) + "|"]
    for arm, by_task in results["arms"].items():
        cells = []
        for t in tasks:
            e = by_task[t]
            cell = _fmt(e["estimate"])
            if "delta" in e:
                d = e["delta"]
                mark = " **\\***" if d["significant"] else ""
                cell += f"<br>Δ {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]{mark}"
            cells.append(cell)
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines.append("")
    if results.get("heldout"):
        h = results["heldout"]
        lines.append(f"Held-out set: {h['records']} records, {h['removed']} removed as duplicates of training data.")
    totals = results["timings"]
    if totals:
        lines.append("Wall time of the work done for this run, by stage: "
                     + ", ".join(f"{k} {v:,.0f}s" for k, v in totals.items()) + ".")  # fmt: skip
    lines.append("")
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()))
    return "\n".join(lines) + "\n"


def delta_chart(results: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in results["arms"] if a != results["baseline"]]
    tasks = list(results["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 0.6 * len(arms) + 1.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for y, arm in enumerate(arms):
            d = results["arms"][arm][task]["delta"]
            color = "tab:red" if d["significant"] else "tab:gray"
            ax.errorbar(d["mean"], y, xerr=[[d["mean"] - d["low"]], [d["high"] - d["mean"]]], fmt="o", color=color)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(arms)), arms if ax is axes[0][0] else [""] * len(arms))
        ax.set_title(f"{task}{' (lower is better)' if results['tasks'][task]['lower_is_better'] else ''}", fontsize=9)
        ax.set_ylim(-0.5, len(arms) - 0.5)
    fig.suptitle(f"difference from {results['baseline']} (95% interval; red: excludes 0)", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def loss_chart(run_dir: Path, png: Path) -> None:
    logs = sorted((run_dir / "loss").glob("*.jsonl")) if (run_dir / "loss").exists() else []
    if logs:
        from train.recipe import plot_loss

        plot_loss(logs, png)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
