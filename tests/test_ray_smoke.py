"""Opt-in (``pytest -m ray``): Ray Data on a real two-node cluster (tests/ray_cluster.py)."""

from __future__ import annotations

import logging

import pytest
from ray_cluster import ray_cluster  # noqa: F401  (the fixture)


@pytest.mark.ray
# Ray's own DataContext.__init__ sets its deprecated fields and warns about them
@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")
def test_map_batches_on_two_nodes(ray_cluster):  # noqa: F811  (the fixture)
    pytest.importorskip("ray.data")  # before the setLevel: importing ray.data configures its logger
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ray.init(address=ray_cluster, log_to_driver=False, logging_level=logging.WARNING)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        ctx.verbose_stats_logs = False

        def double(batch: pa.Table) -> pa.Table:
            return batch.append_column("y", pc.multiply(batch["x"], 2))

        ds = ray.data.from_items([{"x": i} for i in range(1000)], override_num_blocks=2)
        out = pa.concat_tables(ray.get(ds.map_batches(double, batch_format="pyarrow").to_arrow_refs()))

        assert sorted(out["x"].to_pylist()) == list(range(1000))
        assert out.sort_by("x")["y"].to_pylist() == [2 * i for i in range(1000)]
        alive = [n for n in ray.nodes() if n["Alive"]]
        assert len(alive) == 2
        assert ray.cluster_resources()["CPU"] == 2
    finally:
        ray.shutdown()
