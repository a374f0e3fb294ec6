"""Means over seeds, 95% intervals, and a paired bootstrap of each arm against the baseline.

Every task gives per-item results as (numerator, denominator) pairs: accuracy is (0 or 1, 1);
heldout_loss is (summed token loss, tokens), so its score is the token-weighted mean. A run's
score is sum(num) / sum(den) over items; an arm's score is the mean over its seeds.

The interval resamples both sources of noise together: seeds (with replacement, when there are
several) and items (with replacement). The difference from the baseline is paired over items:
each replicate draws one set of item indices and uses it for both arms, so per-item difficulty
cancels, while seeds are drawn independently per arm (training runs are not paired). A
difference is marked when its 95% interval excludes zero.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

REPLICATES = 2000


@dataclass
class Estimate:
    mean: float
    low: float
    high: float
    seeds: list[float]  # the score of each seed's run
    items: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Delta:
    mean: float
    low: float
    high: float
    p: float  # two-sided bootstrap p-value
    significant: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _scores(num: np.ndarray, den: np.ndarray, seed_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
    """Replicate scores: for each replicate, the mean over drawn seeds of sum(num)/sum(den) over drawn items."""
    n = num[seed_idx[:, :, None], item_idx[:, None, :]].sum(-1)  # replicates x seeds drawn
    d = den[seed_idx[:, :, None], item_idx[:, None, :]].sum(-1)
    return (n / np.maximum(d, 1e-12)).mean(-1)


def _draws(rng: np.random.Generator, seeds: int, items: int, replicates: int) -> tuple[np.ndarray, np.ndarray]:
    seed_idx = rng.integers(0, seeds, (replicates, seeds)) if seeds > 1 else np.zeros((replicates, 1), dtype=int)
    return seed_idx, rng.integers(0, items, (replicates, items))


def estimate(num: np.ndarray, den: np.ndarray, replicates: int = REPLICATES, seed: int = 0) -> Estimate:
    """``num`` and ``den`` are seeds x items."""
    num, den = np.atleast_2d(num).astype(float), np.atleast_2d(den).astype(float)
    per_seed = num.sum(1) / np.maximum(den.sum(1), 1e-12)
    rng = np.random.default_rng(seed)
    seed_idx, item_idx = _draws(rng, num.shape[0], num.shape[1], replicates)
    reps = _scores(num, den, seed_idx, item_idx)
    low, high = np.percentile(reps, [2.5, 97.5])
    return Estimate(float(per_seed.mean()), float(low), float(high), per_seed.tolist(), int(num.shape[1]))


def paired_delta(num: np.ndarray, den: np.ndarray, base_num: np.ndarray, base_den: np.ndarray,
                 replicates: int = REPLICATES, seed: int = 0) -> Delta:  # fmt: skip
    """The arm minus the baseline, both seeds x items over the same items in the same order."""
    num, den = np.atleast_2d(num).astype(float), np.atleast_2d(den).astype(float)
    base_num, base_den = np.atleast_2d(base_num).astype(float), np.atleast_2d(base_den).astype(float)
    if num.shape[1] != base_num.shape[1]:
        raise ValueError(f"paired items differ: {num.shape[1]} against {base_num.shape[1]}")
    rng = np.random.default_rng(seed)
    seed_idx, item_idx = _draws(rng, num.shape[0], num.shape[1], replicates)
    base_seed_idx = (
        rng.integers(0, base_num.shape[0], (replicates, base_num.shape[0]))
        if base_num.shape[0] > 1
        else np.zeros((replicates, 1), dtype=int)
    )
    reps = _scores(num, den, seed_idx, item_idx) - _scores(base_num, base_den, base_seed_idx, item_idx)
    observed = (num.sum(1) / np.maximum(den.sum(1), 1e-12)).mean() - (
        base_num.sum(1) / np.maximum(base_den.sum(1), 1e-12)
    ).mean()
    low, high = np.percentile(reps, [2.5, 97.5])
    p = min(1.0, 2 * min((reps <= 0).mean(), (reps >= 0).mean()))
    return Delta(float(observed), float(low), float(high), float(p), bool(low > 0 or high < 0))
