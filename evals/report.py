"""The report of a run, rebuilt from its per-item files: results.json, results.md, charts and
report.html (evals.page).

``evals report RUN_DIR`` calls ``build`` again, so the numbers can always be traced back to
``items/<arm>/<run>/<task>.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from datakit.io import write_text
from evals.page import write_page
from evals.recipe import DEFAULT_EFFECT, DEFAULT_EFFECTS, NULL_ARM
from evals.stats import MIN_SEEDS, Runs, delta, estimate, noise_floor
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


def verdict(d: dict[str, Any], lower_better: bool) -> str:
    """What a difference means: better, worse, within noise, or not tested."""
    if not d["tested"]:
        return "not tested"
    if not d["significant"]:
        return "within noise"
    return "better" if (d["mean"] < 0) == lower_better else "worse"


def arm_runs(run_dir: Path, info: dict[str, Any], arm: str, task: str, items: list[int]) -> Runs:
    runs = info["runs"][arm]
    return Runs(*matrices(run_dir, arm, runs, task, items), trained=runs != ["untrained"], seeds=tuple(runs))


def build(run_dir: str | Path) -> dict[str, Any]:
    """Recompute every number of a run folder from its per-item files and write the report.
    Folders written before verdicts needed seeds are read with today's rules."""
    run_dir = Path(run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    baseline = info["baseline"]
    min_seeds = info.get("min_seeds", MIN_SEEDS)
    effects = info.get("effects") or {}
    results: dict[str, Any] = {"recipe": info["recipe"], "baseline": baseline, "min_seeds": min_seeds,
                               "null_arm": NULL_ARM if info.get("null_arm") else None,
                               "tasks": {}, "arms": {}}  # fmt: skip
    for task in info["tasks"]:
        items = common_items(run_dir, info, task)
        runs = {arm: arm_runs(run_dir, info, arm, task, items) for arm in info["arms"]}
        lower = lower_is_better(task)
        effect = effects.get(task, DEFAULT_EFFECTS.get(task, DEFAULT_EFFECT))
        results["tasks"][task] = {"metric": info["metrics"].get(task), "items": len(items), "lower_is_better": lower,
                                  "noise": noise_floor(runs, baseline, effect, min_seeds)}  # fmt: skip
        for arm, arm_runs_ in runs.items():
            entry: dict[str, Any] = {"estimate": estimate(arm_runs_).to_dict(), "runs": info["runs"][arm]}
            if arm != baseline:
                d = delta(arm_runs_, runs[baseline], min_seeds).to_dict()
                d["verdict"] = verdict(d, lower)
                entry["delta"] = d
            results["arms"].setdefault(arm, {})[task] = entry
    results["heldout"] = info.get("heldout")
    results["timings"] = stage_totals(info["timings"])
    results["versions"] = info["versions"]
    write_text(run_dir / "results.json", json.dumps(results, indent=1))
    write_text(run_dir / "results.md", markdown(results, info))
    delta_chart(results, run_dir / "deltas.png")
    loss_chart(run_dir, run_dir / "loss.png")
    write_page(run_dir, results, info)
    return results


def stage_totals(timings: list[dict[str, Any]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for t in timings:
        if t["seconds"] is not None:
            totals[t["stage"]] = round(totals.get(t["stage"], 0.0) + t["seconds"], 1)
    return totals


def _fmt(e: dict[str, Any]) -> str:
    return f"{e['mean']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"


def _delta_cell(d: dict[str, Any]) -> str:
    if not d["tested"]:
        return f"Δ {d['mean']:+.3f}, not tested"
    cell = f"Δ {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] {d['verdict']}"
    return cell + (" **\\***" if d["significant"] else "")


def markdown(results: dict[str, Any], info: dict[str, Any]) -> str:
    tasks = list(results["tasks"])
    baseline, min_seeds = results["baseline"], results["min_seeds"]
    lines = [f"# {results['recipe']}", ""]
    lines.append(f"Model {info['model']}, seeds {info['seeds']}, baseline arm **{baseline}**. Each cell: the "
                 "mean over seeds [95% interval]; below it, the difference from the baseline [95% interval] "
                 "and its verdict. A difference is tested with a t test over seeds (paired by seed where both "
                 "arms are trained with the same seeds) that adds the item-sampling noise, and **\\*** marks one whose interval excludes zero (better or worse). "
                 f"A verdict needs at least {min_seeds} seeds: without the spread between training runs, "
                 "no difference can be told from training noise.")  # fmt: skip
    untested = sorted({d["reason"] for by_task in results["arms"].values() for e in by_task.values()
                       if (d := e.get("delta")) and not d["tested"]})  # fmt: skip
    for reason in untested:
        lines += ["", f"**Not tested**: {reason}. The estimates are shown; they carry no verdict."]
    if results.get("null_arm"):
        lines += ["", f"The **{results['null_arm']}** arm is the baseline's data in another order: its difference "
                  "is training noise alone, the floor any real difference must clear."]  # fmt: skip
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
                cell += "<br>" + _delta_cell(e["delta"])
            cells.append(cell)
        name = f"{arm} (baseline)" if arm == baseline else arm
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Noise floor, per task: the spread between training runs (standard deviation of run scores, "
              "pooled over arms), the smallest true difference a comparison with these seeds and items detects "
              "80% of the time at the 5% level, and the seeds per arm needed to detect the given effect.", ""]  # fmt: skip
    lines += ["| task | seed-to-seed sd | null arm Δ | minimum detectable effect | seeds for effect |",
              "|---|---|---|---|---|"]  # fmt: skip
    for t in tasks:
        noise = results["tasks"][t]["noise"]
        null = results["arms"].get(results.get("null_arm") or "", {}).get(t, {}).get("delta")
        null_cell = "-" if null is None else _delta_cell(null).replace("Δ ", "")
        if noise.get("seed_sd") is None:
            lines.append(f"| {t} | not measured | {null_cell} | - | - |")
            continue
        needed, effect = noise["seeds_for_effect"], noise["effect"]
        if needed:
            needed_cell = f"{needed} for {effect:g}"
        elif noise.get("items_limit"):
            needed_cell = f"more items, not seeds, for {effect:g}"
        else:
            needed_cell = f"over 200 for {effect:g}"
        lines.append(f"| {t} | {noise['seed_sd']:.4f} | {null_cell} | {noise['mde']:.4f} ({noise['seeds']} seeds) "
                     f"| {needed_cell} |")  # fmt: skip
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
            if not d["tested"]:  # an estimate without a verdict: a hollow marker, no interval
                ax.plot(d["mean"], y, "o", mfc="none", color="tab:gray")
                continue
            color = "tab:red" if d["significant"] else "tab:gray"
            ax.errorbar(d["mean"], y, xerr=[[d["mean"] - d["low"]], [d["high"] - d["mean"]]], fmt="o", color=color)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(arms)), arms if ax is axes[0][0] else [""] * len(arms))
        ax.set_title(f"{task}{' (lower is better)' if results['tasks'][task]['lower_is_better'] else ''}", fontsize=9)
        ax.set_ylim(-0.5, len(arms) - 0.5)
    fig.suptitle(
        f"difference from {results['baseline']} (95% t interval; red: excludes 0; hollow: not tested)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def loss_chart(run_dir: Path, png: Path) -> None:
    logs = sorted((run_dir / "loss").glob("*.jsonl")) if (run_dir / "loss").exists() else []
    if logs:
        from datakit.plots import plot_loss

        plot_loss(logs, png)
