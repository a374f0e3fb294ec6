"""Is the verdict calibrated? A simulation with known truth, its noise measured from real runs.

A run's per-item result is modelled as

    loss[arm, seed, item] = mu + item[item] + shared[seed] + run[arm, seed] + noise[arm, seed, item]

- ``item``: how hard each item is (the same for every run);
- ``shared``: what runs of the same seed share across arms (initial adapter weights, dropout);
- ``run``: the rest of a training run's effect on its overall score (data order...);
- ``noise``: what a rerun changes item by item.

``measure`` estimates the four spreads (and takes the items' token counts) from the per-item
files of real runs; ``simulate`` draws many ablations from that model, with two arms that are
the same (a null) or differ by a planted effect, and counts how often ``evals.stats.delta``
calls the difference significant. Under the null that rate must be at most 5%; under an
effect it is the power.

    python -m evals.calibration RUN_DIR [--task heldout_loss] [--sims 2000]

prints the false-positive rate and power table for 3, 5 and 10 seeds, from the noise measured
in RUN_DIR (a finished ``evals run`` folder with at least two arms of several seeds).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from evals.stats import MIN_SEEDS, Runs, delta


@dataclass
class NoiseModel:
    mu: float
    item_sd: float
    shared_sd: float
    run_sd: float
    noise_sd: float
    tokens: list[float]  # per-item denominators (token counts), from the real items

    def to_dict(self) -> dict:
        return asdict(self)


def measure(arms: dict[str, Runs]) -> NoiseModel:
    """Method-of-moments estimates of the model's spreads from trained arms with paired seeds.

    Per-item values are num/den (an item's mean token loss), and an item's rerun noise shrinks
    with its length: its variance is noise_sd**2 / w, w = its tokens over the mean item's. Then
    a run's (token-weighted) score carries noise_sd**2 / items of that noise; the seed-to-seed
    variance of run scores within an arm, less that, is shared + run; the covariance of paired
    runs across arms (same seed) is the shared part.
    """
    trained = [r for r in arms.values() if r.trained and r.n > 1]
    if len(trained) < 2:
        raise ValueError("measuring noise needs at least two trained arms with several seeds")
    n = min(r.n for r in trained)
    den = trained[0].den[0]
    w = den / den.mean()
    x = np.stack([r.num[:n] / np.maximum(r.den[:n], 1e-12) for r in trained])  # arms x seeds x items
    n_runs, n_items = x.shape[0] * n, x.shape[2]
    scores = (x * w).sum(2) / w.sum()  # arms x seeds: the runs' scores
    item_means = x.mean((0, 1))
    resid = x - scores[:, :, None] - item_means[None, None, :] + scores.mean()
    noise_var = float((w * resid**2).sum() / ((n_runs - 1) * (n_items - 1)))
    within = float(np.mean([scores[a].var(ddof=1) for a in range(x.shape[0])])) - noise_var / n_items
    covs = [np.cov(scores[a], scores[b])[0, 1] for a in range(x.shape[0]) for b in range(a + 1, x.shape[0])]
    shared_var = float(np.clip(np.mean(covs), 0.0, max(within, 0.0)))
    run_var = max(0.0, within - shared_var)
    item_var = max(0.0, float(item_means.var(ddof=1)) - float(np.mean(noise_var / w)) / n_runs)
    return NoiseModel(
        mu=float(scores.mean()), item_sd=float(np.sqrt(item_var)), shared_sd=float(np.sqrt(shared_var)),
        run_sd=float(np.sqrt(run_var)), noise_sd=float(np.sqrt(noise_var)), tokens=den.tolist(),
    )  # fmt: skip


def draw(model: NoiseModel, seeds: int, effect: float, rng: np.random.Generator) -> tuple[Runs, Runs]:
    """One simulated ablation from the model: an arm shifted by ``effect`` and its baseline,
    ``seeds`` runs each over the real items' token counts, seeds paired."""
    den = np.asarray(model.tokens, dtype=float)
    names = tuple(f"seed-{s}" for s in range(seeds))
    item = rng.normal(0, model.item_sd, den.size)
    shared = rng.normal(0, model.shared_sd, (seeds, 1))
    arms = []
    for shift in (effect, 0.0):
        run = rng.normal(0, model.run_sd, (seeds, 1))
        noise = rng.normal(0, 1, (seeds, den.size)) * model.noise_sd / np.sqrt(den / den.mean())
        per_item = model.mu + shift + item + shared + run + noise
        arms.append(Runs(per_item * den, np.broadcast_to(den, per_item.shape).copy(), seeds=names))
    return arms[0], arms[1]


def simulate(model: NoiseModel, seeds: int, effect: float = 0.0, sims: int = 2000, rng_seed: int = 0) -> float:
    """The share of simulated two-arm ablations whose difference ``delta`` marks significant."""
    rng = np.random.default_rng(rng_seed)
    hits = 0
    for _ in range(sims):
        arm, baseline = draw(model, seeds, effect, rng)
        hits += bool(delta(arm, baseline, min_seeds=min(seeds, MIN_SEEDS)).significant)
    return hits / sims


def runs_from_folder(run_dir: Path, task: str) -> dict[str, Runs]:
    """The trained arms of a finished run folder, as ``Runs`` over their common items."""
    from evals.report import common_items, matrices

    info = json.loads((run_dir / "run.json").read_text())
    items = common_items(run_dir, info, task)
    out = {}
    for arm in info["arms"]:
        runs = info["runs"][arm]
        if runs == ["untrained"]:
            continue
        out[arm] = Runs(*matrices(run_dir, arm, runs, task, items), seeds=tuple(runs))
    return out


def table(model: NoiseModel, effects: list[float], seeds: tuple[int, ...] = (3, 5, 10), sims: int = 2000) -> list[dict]:
    rows = []
    for n in seeds:
        row = {"seeds": n, "false_positive": simulate(model, n, 0.0, sims, rng_seed=n)}
        for e in effects:
            row[f"power@{e:g}"] = simulate(model, n, e, sims, rng_seed=1000 + n)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--task", default="heldout_loss")
    parser.add_argument("--sims", type=int, default=2000)
    parser.add_argument(
        "--arms", default=None, help="comma-separated arms to measure noise from (default: all trained)"
    )
    parser.add_argument("--effects", default="0.005,0.01,0.02", help="planted differences for the power columns")
    parser.add_argument("--save", type=Path, default=None, help="also write these arms' per-item runs to a JSON file")
    args = parser.parse_args()
    arms = runs_from_folder(args.run_dir, args.task)
    if args.arms:
        arms = {a: arms[a] for a in args.arms.split(",")}
    model = measure(arms)
    if args.save:
        runs = {
            a: {s: np.stack([r.num[i], r.den[i]], 1).tolist() for i, s in enumerate(r.seeds)} for a, r in arms.items()
        }
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps({"task": args.task, "null_arms": list(arms), "arms": runs}) + "\n")
    print(f"noise measured from {', '.join(arms)} in {args.run_dir} ({args.task}):")
    print(json.dumps({k: round(v, 5) for k, v in model.to_dict().items() if k != "tokens"}))
    effects = [float(e) for e in args.effects.split(",")]
    print(f"planted effects {args.effects}; {args.sims} simulated ablations per cell")
    for row in table(model, effects, sims=args.sims):
        print("  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
