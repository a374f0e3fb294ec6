"""The Ray executor on a real two-node Ray cluster on loopback (tests/ray_cluster.py).

Opt in: ``pip install -e '.[ray]'`` then ``pytest -m ray`` (CI runs it as its own step). Each
test runs a step on the held fixtures with the local executor and with Ray, and compares the
outputs byte for byte: kept ids, clusters, selections with the same seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import fixture_path

import datakit
from datakit.ray_executor import RayExecutor

pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
MIXED = Path(__file__).parent / "fixtures" / "dedupe" / "mixed.jsonl"


def both(step: str, source: Path, tmp: Path, address: str, **options) -> tuple[dict, dict]:
    """(local report, Ray report), after checking that every file they wrote is the same."""
    reports = {}
    for name, executor in (("local", None), ("ray", RayExecutor(address=address, batch_size=300))):
        out = tmp / name / "out.jsonl"
        reports[name] = datakit.run(step, source, out, executor=executor, **options).report.to_dict()
    local_files = sorted(p.name for p in (tmp / "local").iterdir())
    assert local_files == sorted(p.name for p in (tmp / "ray").iterdir())
    for name in local_files:
        assert (tmp / "local" / name).read_bytes() == (tmp / "ray" / name).read_bytes(), name
    return reports["local"], reports["ray"]


def same_report(local: dict, ray: dict) -> None:
    for report in (local, ray):
        report.pop("seconds")
        report.pop("phases")  # each executor has its own (Ray ingests the input first)
        report.pop("output")
        report.pop("side_outputs")
    assert local == ray


def test_dedupe_on_two_nodes_equals_the_local_executor(ray_cluster, tmp_path: Path) -> None:
    local, ray = both("dedupe", MIXED, tmp_path, ray_cluster)
    # the removals the reference clusters file lists (written with the whole set in one batch)
    reference = [json.loads(line) for line in (MIXED.parent / "clusters_minhash.jsonl").read_text().splitlines()]
    expected = {}
    for cluster in reference:
        reason = f"{cluster['stage']} duplicate"
        expected[reason] = expected.get(reason, 0) + len(cluster["removed"])
    assert local["removed"] == expected and len(expected) == 2
    same_report(local, ray)


def test_select_on_two_nodes_equals_the_local_executor(ray_cluster, tmp_path: Path) -> None:
    source = tmp_path / "alpaca.json"
    source.write_text(json.dumps(json.loads(fixture_path("llama-factory/alpaca_en_demo.json").read_text())[:400]))
    (tmp_path / "runs").mkdir()
    local, ray = both("select", source, tmp_path / "runs", ray_cluster, k=40, method="kcenter", seed=3)
    assert local["written"] == 40
    same_report(local, ray)


def test_an_ablation_trains_its_seeds_as_ray_tasks(ray_cluster, tmp_path: Path) -> None:
    """``evals run --executor ray``: the training and evaluation jobs run as tasks on both nodes,
    and the results equal a local run's (same seeds, same data: the same adapters and scores)."""
    from test_evals import evals_cli, tiny_recipe

    recipe = tiny_recipe(tmp_path, seeds=[0, 1], eval={"tasks": ["heldout_loss"], "limit": 6, "batch_size": 8})
    on_ray = evals_cli(
        "run", str(recipe), "--out", str(tmp_path / "ray"), "--executor", "ray", "--address", ray_cluster
    )
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    assert "2 train jobs as Ray tasks on 2 CPUs" in on_ray.stderr
    local = evals_cli("run", str(recipe), "--out", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr[-3000:]
    results = [json.loads((tmp_path / run / "results.json").read_text())["arms"] for run in ("ray", "local")]
    assert results[0]["all"]["heldout_loss"]["estimate"]["mean"] == pytest.approx(
        results[1]["all"]["heldout_loss"]["estimate"]["mean"], rel=1e-4
    )
