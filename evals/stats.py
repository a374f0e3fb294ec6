"""Scores, intervals and verdicts that separate a real data effect from training noise.

Every task gives per-item results as (numerator, denominator) pairs: accuracy is (0 or 1, 1);
heldout_loss is (summed token loss, tokens), so its score is the token-weighted mean. A run's
score is sum(num) / sum(den) over items; an arm's score is the mean over its runs (seeds).

Two sources of noise stand between an observed difference and a real one:

- **training noise**: a rerun with another seed (data order, adapter init, dropout) gives
  another model. It is measured only by training each arm several times. With the same items
  in every run, the spread of an arm's run scores is this noise alone.
- **item sampling**: the task's items are a sample; another sample would rank the arms a
  little differently. For one difference this is the spread, over items, of how much the two
  arms differ on each item (less the part of that spread that training noise already explains).

The difference of an arm from the baseline is analysed per seed: seed s of the arm is paired
with seed s of the baseline (they share the adapter's initial weights and dropout masks), and
the paired differences d_s give the training noise of the difference, var(d)/n, with n - 1
degrees of freedom. Where runs cannot be paired (other seed lists, an untrained arm), the two
arms' run scores give it as in Welch's test. The item term is added, and the interval uses
Student's t with Welch-Satterthwaite degrees of freedom. With 3 seeds t(2) = 4.30 rather than
1.96: the price of estimating a spread from three runs, and what keeps the false-positive rate
at 5% (a bootstrap over 3 seeds is far too narrow). ``evals.calibration`` proves this by
simulation, with noise measured from real runs.

No verdict without measured training noise: a difference is tested only when every trained
side has at least ``MIN_SEEDS`` runs. Three is the least number of runs whose spread has more
than one degree of freedom; with two, t(1) = 12.7 and a difference would have to be about nine
times its noise to be seen. Below it the report gives the estimate and says "not tested".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sp

from datakit.errors import DatakitError

MIN_SEEDS = 3
ALPHA = 0.05  # two-sided
POWER = 0.80  # for the minimum detectable effect and the seeds needed


class ScoreError(DatakitError, ValueError):
    """Per-item results that cannot be scored (no items, a NaN, nothing to divide by)."""


@dataclass
class Runs:
    """One arm's per-item results on one task: runs (seeds) x items, same items in every run."""

    num: np.ndarray
    den: np.ndarray
    trained: bool = True  # an untrained model is deterministic: no training noise
    seeds: tuple[str, ...] = ()  # run names, to pair runs by seed

    def __post_init__(self) -> None:
        self.num = np.atleast_2d(np.asarray(self.num, dtype=float))
        self.den = np.atleast_2d(np.asarray(self.den, dtype=float))
        if self.num.shape != self.den.shape:
            raise ValueError(f"num and den differ in shape: {self.num.shape} against {self.den.shape}")
        # a missing or broken result must stop the report, never pass as a score (0/0 read as a
        # loss of 0 would look like the best arm; NaN would look like "within noise")
        if self.num.shape[1] == 0:
            raise ScoreError("no items to score (the runs share no item)")
        if not (np.isfinite(self.num).all() and np.isfinite(self.den).all()):
            raise ScoreError("a per-item result is not a finite number")
        if (self.den.sum(1) <= 0).any():
            raise ScoreError("a run has nothing to score (its denominators sum to zero)")

    @property
    def n(self) -> int:
        return self.num.shape[0]

    @property
    def scores(self) -> np.ndarray:
        """Each run's score: sum(num) / sum(den) over its items."""
        return self.num.sum(1) / np.maximum(self.den.sum(1), 1e-12)

    def influence(self) -> np.ndarray:
        """runs x items: each item's share of its run's deviation from that run's score
        (linearised ratio), so that score + mean(influence over a resample) ~ resampled score."""
        mean_den = np.maximum(self.den.mean(1, keepdims=True), 1e-12)
        return (self.num - self.scores[:, None] * self.den) / mean_den


@dataclass
class Estimate:
    mean: float
    low: float
    high: float
    seeds: list[float]  # the score of each run
    items: int
    seed_sd: float | None  # spread between training runs (None: fewer than 2 trained runs)
    covers: str  # what the interval covers: "seeds and items", "items" (one run or untrained)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Delta:
    """The arm minus the baseline on one task."""

    mean: float
    tested: bool
    reason: str  # why not tested, or what the test used
    low: float | None = None
    high: float | None = None
    se: float | None = None
    df: float | None = None
    p: float | None = None
    significant: bool | None = None
    mde: float | None = None  # minimum detectable effect (80% power, 5% two-sided) at these seeds and items
    paired: bool = False

    def to_dict(self) -> dict[str, Any]:
        # Untested differences carry no significance flag at all, not even a false one.
        return {k: v for k, v in asdict(self).items() if v is not None}


def t_quantile(df: float, q: float) -> float:
    return float(sp.t.ppf(q, df)) if np.isfinite(df) else float(sp.norm.ppf(q))


def _satterthwaite(parts: list[tuple[float, float]]) -> float:
    """Degrees of freedom of a sum of variance estimates [(variance, its df)]."""
    total = sum(v for v, _ in parts)
    denom = sum(v * v / df for v, df in parts if v > 0 and df > 0)
    return float("inf") if denom == 0 else total * total / denom


def _item_variance(a: Runs, b: Runs, paired: bool) -> float:
    """Item-sampling variance of the difference of the two arms' scores: the between-item
    variance of the per-item difference, less what training noise puts into it."""
    delta_i = a.influence().mean(0) - b.influence().mean(0)
    between = delta_i.var(ddof=1) if delta_i.size > 1 else 0.0
    if paired:
        d = a.influence() - b.influence()
        noise = d.var(0, ddof=1).mean() / a.n if a.n > 1 else 0.0
    else:
        noise = sum(r.influence().var(0, ddof=1).mean() / r.n for r in (a, b) if r.trained and r.n > 1)
    return max(0.0, between - noise) / delta_i.size


def estimate(runs: Runs) -> Estimate:
    """An arm's score with a 95% interval over seeds (when several) and items."""
    scores = runs.scores
    n_items = runs.num.shape[1]
    influence = runs.influence().mean(0)
    item_var = influence.var(ddof=1) / n_items if n_items > 1 else 0.0
    parts = [(item_var, n_items - 1)]
    seed_sd = None
    if runs.trained and runs.n > 1:
        seed_sd = float(scores.std(ddof=1))
        parts.append((seed_sd**2 / runs.n, runs.n - 1))
    # An arm's own score is mostly item sampling (a large, well-estimated term), so Satterthwaite's
    # degrees of freedom fit here; a difference's verdict uses the stricter rule of delta().
    half = t_quantile(_satterthwaite(parts), 1 - ALPHA / 2) * float(np.sqrt(sum(v for v, _ in parts)))
    mean = float(scores.mean())
    covers = "seeds and items" if seed_sd is not None else "items"
    return Estimate(mean, mean - half, mean + half, scores.tolist(), n_items, seed_sd, covers)


def can_pair(a: Runs, b: Runs) -> bool:
    return a.trained and b.trained and a.n == b.n and bool(a.seeds) and a.seeds == b.seeds


def delta(a: Runs, b: Runs, min_seeds: int = MIN_SEEDS) -> Delta:
    """Arm ``a`` minus baseline ``b`` over the same items (same order)."""
    if a.num.shape[1] != b.num.shape[1]:
        raise ValueError(f"paired items differ: {a.num.shape[1]} against {b.num.shape[1]}")
    mean = float(a.scores.mean() - b.scores.mean())
    short = [r for r in (a, b) if r.trained and r.n < min_seeds]
    if short:
        fewest = min(r.n for r in short)
        return Delta(mean, tested=False,
                     reason=f"{fewest} seed{'s' if fewest != 1 else ''}; a verdict needs the "
                            f"spread between training runs, measured from at least {min_seeds} seeds")  # fmt: skip
    paired = can_pair(a, b)
    if paired:
        d = a.scores - b.scores
        parts = [(d.var(ddof=1) / a.n, a.n - 1)]
    else:
        parts = [(r.scores.var(ddof=1) / r.n, r.n - 1) for r in (a, b) if r.trained]
    n_items = a.num.shape[1]
    if parts and sum(v for v, _ in parts) == 0:  # seeds that changed nothing measure no noise
        return Delta(mean, tested=False, reason="the seeds gave identical runs, so training noise is not "
                     "measured (was the seed applied?)")  # fmt: skip
    if not parts and n_items < 2:
        return Delta(mean, tested=False, reason="one item and no training runs: no noise to test against")
    # The degrees of freedom are the training term's alone (Welch-Satterthwaite over the two
    # arms where they are not paired). The item term's estimate is mostly noise when it is small,
    # and letting it raise the degrees of freedom took the false-positive rate at 3 seeds to 9%
    # in the calibration simulation; this way the test is never less strict than the t test on
    # the seeds alone. Two untrained models are compared over items (n_items - 1).
    if parts:
        df = _satterthwaite(parts)  # finite: the training variance is above zero here
        df = min(df, n_items - 1) if n_items > 1 else df
    else:
        df = float(n_items - 1)
    se = float(np.sqrt(sum(v for v, _ in parts) + _item_variance(a, b, paired)))
    t_crit = t_quantile(df, 1 - ALPHA / 2)
    if se == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(2 * sp.t.sf(abs(mean) / se, df)) if np.isfinite(df) else float(2 * sp.norm.sf(abs(mean) / se))
    runs = f"{a.n} paired seeds" if paired else "unpaired runs" if parts else "two untrained models"
    return Delta(mean, tested=True, reason=f"t test over {runs} and items, df {df:.1f}",
                 low=mean - t_crit * se, high=mean + t_crit * se, se=se, df=float(df), p=p, significant=p < ALPHA,
                 mde=minimum_detectable(se, df), paired=paired)  # fmt: skip


def minimum_detectable(se: float, df: float) -> float:
    """The true difference a two-sided 5% t test finds 80% of the time, at this standard error."""
    return (t_quantile(df, 1 - ALPHA / 2) + t_quantile(df, POWER)) * se


def seeds_needed(effect: float, per_seed_var: float, item_var: float, min_seeds: int = MIN_SEEDS,
                 most: int = 200) -> int | None:  # fmt: skip
    """Seeds per arm for 80% power against a true difference ``effect``, given the variance of
    one paired seed difference and the (seed-independent) item variance; None if more than
    ``most`` would be needed (or if item sampling alone hides the effect: see items_limit)."""
    effect = abs(effect)
    for n in range(min_seeds, most + 1):
        se = np.sqrt(per_seed_var / n + item_var)
        if minimum_detectable(float(se), n - 1) <= effect:
            return n
    return None


def noise_floor(arms: dict[str, Runs], baseline: str, effect: float, min_seeds: int = MIN_SEEDS) -> dict[str, Any]:
    """A task's noise: the pooled spread between training runs, the variance of one paired
    seed difference, the minimum detectable effect at the seeds used and the seeds needed to
    detect ``effect``."""
    trained = [r for r in arms.values() if r.trained and r.n > 1]
    out: dict[str, Any] = {"effect": effect, "min_seeds": min_seeds}
    if not trained:
        out["seed_sd"] = None
        out["note"] = "no arm has two trained runs: the spread between training runs is not measured"
        return out
    dof = sum(r.n - 1 for r in trained)
    pooled_var = sum(r.scores.var(ddof=1) * (r.n - 1) for r in trained) / dof
    out["seed_sd"] = float(np.sqrt(pooled_var))
    # one paired difference of two runs has variance 2 * pooled_var (an upper bound: pairing by
    # seed can only remove shared noise); the item term comes from the arms' own comparisons
    base = arms[baseline]
    item_vars = [_item_variance(r, base, can_pair(r, base)) for name, r in arms.items()
                 if name != baseline and r.trained and r.n > 1]  # fmt: skip
    item_var = float(np.median(item_vars)) if item_vars else 0.0
    n = max(r.n for r in trained)
    se = float(np.sqrt(2 * pooled_var / n + item_var))
    out["seeds"] = n
    out["mde"] = minimum_detectable(se, n - 1)
    out["seeds_for_effect"] = seeds_needed(effect, 2 * pooled_var, item_var, min_seeds)
    # with infinitely many seeds only the item term is left: if it alone hides the effect,
    # more items (not more seeds) are what is missing
    out["items_limit"] = bool(minimum_detectable(float(np.sqrt(item_var)), float("inf")) > abs(effect))
    return out
