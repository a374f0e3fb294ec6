"""The verdict's statistics: calibrated under a null whose noise was measured from real runs,
powered under a planted effect, and silent (no significance flag) without enough seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import FIXTURES

from evals.calibration import draw, measure, simulate
from evals.stats import MIN_SEEDS, Runs, delta, estimate, noise_floor

# Per-item heldout_loss of real quick-start runs (arms x seeds): see tests/fixtures/SOURCES.md.
REAL_RUNS = FIXTURES / "noise" / "quickstart_heldout_loss.json"
SIMS = 2000
# the false-positive rate may exceed 5% by simulation error only: three standard errors
TOLERANCE = 3 * np.sqrt(0.05 * 0.95 / SIMS)


def real_runs() -> dict[str, Runs]:
    data = json.loads(REAL_RUNS.read_text())
    out = {}
    for arm, runs in data["arms"].items():
        seeds = sorted(runs)
        values = np.array([runs[s] for s in seeds], dtype=float)  # seeds x items x (num, den)
        out[arm] = Runs(values[..., 0], values[..., 1], seeds=tuple(seeds))
    return out


@pytest.fixture(scope="module")
def noise():
    data = json.loads(REAL_RUNS.read_text())
    return measure({arm: runs for arm, runs in real_runs().items() if arm in data["null_arms"]})


def test_noise_is_measured_from_real_runs(noise) -> None:
    # every spread the model needs is there, and training noise is not zero on real runs
    assert noise.run_sd > 0 or noise.shared_sd > 0
    assert noise.noise_sd > 0 and noise.item_sd > noise.noise_sd  # items differ more than reruns move them
    assert len(noise.tokens) == len(next(iter(real_runs().values())).den[0])


@pytest.mark.parametrize("seeds", [3, 5, 10])
def test_false_positive_rate_is_at_most_five_percent(noise, seeds: int) -> None:
    rate = simulate(noise, seeds, effect=0.0, sims=SIMS, rng_seed=seeds)
    assert rate <= 0.05 + TOLERANCE, f"{seeds} seeds: {rate:.3f} of null ablations were called significant"


def test_power_grows_with_seeds_against_a_planted_effect(noise) -> None:
    run_level = float(np.hypot(noise.shared_sd, noise.run_sd))
    effect = 3 * max(run_level, 1e-4)
    power = [simulate(noise, n, effect=effect, sims=400, rng_seed=100 + n) for n in (3, 5, 10)]
    assert power[0] < power[1] < power[2] or power[2] == 1.0
    assert power[2] >= 0.8


def test_a_bootstrap_over_three_seeds_would_not_be_calibrated(noise) -> None:
    """Why the t test: the naive interval (normal quantile over seeds and items) is too narrow."""
    rng = np.random.default_rng(5)
    hits = 0
    for _ in range(SIMS // 2):
        arm, baseline = draw(noise, 3, 0.0, rng)
        d = arm.scores - baseline.scores
        hits += abs(d.mean()) > 1.96 * d.std(ddof=1) / np.sqrt(3)
    assert hits / (SIMS // 2) > 0.05 + TOLERANCE  # so the simulation can tell a miscalibrated method


def test_fewer_seeds_than_the_minimum_are_not_tested() -> None:
    rng = np.random.default_rng(0)
    den = np.full((2, 50), 10.0)
    a = Runs(rng.normal(20, 1, (2, 50)), den, seeds=("seed-0", "seed-1"))
    b = Runs(rng.normal(10, 1, (2, 50)), den, seeds=("seed-0", "seed-1"))
    d = delta(a, b)
    assert d.mean == pytest.approx(float(a.scores.mean() - b.scores.mean()))
    assert not d.tested and f"at least {MIN_SEEDS} seeds" in d.reason
    assert "significant" not in d.to_dict() and "low" not in d.to_dict()  # no flag at all, not even False
    assert delta(a, b, min_seeds=2).significant  # a huge difference, once it may be tested


def test_two_fixed_models_are_compared_over_items() -> None:
    """Untrained models have no training noise: the test is over items alone."""
    rng = np.random.default_rng(1)
    base = (rng.random((1, 400)) < 0.5).astype(float)
    ones = np.ones_like(base)
    better = base.copy()
    better[0, rng.choice(np.flatnonzero(base[0] == 0), 40, replace=False)] = 1.0
    real = delta(Runs(better, ones, trained=False), Runs(base, ones, trained=False))
    assert real.tested and real.significant and real.low > 0 and real.mean == pytest.approx(0.1)
    same = delta(Runs(base, ones, trained=False), Runs(base, ones, trained=False))
    assert same.tested and not same.significant


def test_the_interval_widens_with_the_spread_between_seeds() -> None:
    rng = np.random.default_rng(2)
    den = np.full((4, 80), 20.0)
    tight = Runs(rng.normal(30, 2, (4, 80)), den)
    spread = Runs(tight.num + np.array([[-40.0], [40.0], [-40.0], [40.0]]), den)
    assert estimate(spread).high - estimate(spread).low > estimate(tight).high - estimate(tight).low
    assert estimate(spread).seed_sd > estimate(tight).seed_sd


def test_noise_floor_gives_seeds_needed_for_an_effect() -> None:
    runs = real_runs()
    names = list(runs)
    floor = noise_floor(runs, names[0], effect=0.01)
    assert floor["seed_sd"] > 0 and floor["mde"] > 0
    bigger = noise_floor(runs, names[0], effect=0.05)["seeds_for_effect"]
    smaller = floor["seeds_for_effect"]
    assert bigger is not None and (smaller is None or smaller >= bigger)


def test_results_that_cannot_be_scored_stop_the_report_instead_of_passing_as_scores() -> None:
    from evals.stats import ScoreError

    ones = np.ones((3, 4))
    with pytest.raises(ScoreError, match="finite"):
        Runs(np.full((3, 4), np.nan), ones)
    with pytest.raises(ScoreError, match="sum to zero"):  # 0/0 must not read as a loss of 0
        Runs(np.zeros((3, 4)), np.zeros((3, 4)))
    with pytest.raises(ScoreError, match="no items"):
        Runs(np.zeros((3, 0)), np.zeros((3, 0)))


def test_seeds_that_change_nothing_measure_no_noise() -> None:
    seeds = ("seed-0", "seed-1", "seed-2")
    same = Runs(np.ones((3, 20)), np.ones((3, 20)), seeds=seeds)
    worse = Runs(np.full((3, 20), 2.0), np.ones((3, 20)), seeds=seeds)
    d = delta(worse, same)
    assert not d.tested and "identical runs" in d.reason and "significant" not in d.to_dict()
