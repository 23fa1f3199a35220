"""Batch training time as the history grows."""

from __future__ import annotations

import math
import time
from typing import Any

from predictor.config import Settings
from predictor.simulate.fleet import CANONICAL_METRICS, FleetSpec, simulate
from predictor.training.train import train

NODES = 50


def history(rows: int, *, nodes: int = NODES) -> Any:
    """A simulated, labelled fleet history of about ``rows`` samples."""
    steps = max(2, math.ceil(rows / (nodes * len(CANONICAL_METRICS))))
    spec = FleetSpec(
        nodes=nodes, pools=min(4, nodes), duration_s=steps * 10.0, seed=1,
        failure_rate_per_node_day=2.0,
    )  # fmt: skip
    return simulate(spec)


def bench_training(*, sizes: tuple[int, ...] = (250_000, 1_000_000)) -> dict[str, Any]:
    """CPU seconds of ``train`` per history size; growth as time per row against the smallest."""
    rows_out = []
    for rows in sizes:
        fleet = history(rows)
        started, started_cpu = time.perf_counter(), time.process_time()
        _, _, snaps, _ = train(samples=fleet.samples, events=fleet.events, settings=Settings())
        wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
        rows_out.append(
            {
                "sample_rows": len(fleet.samples),
                "snapshot_rows": len(snaps.ts),
                "wall_s": wall,
                "cpu_s": cpu,  # all threads; the machine may be shared
                "rows_per_cpu_s": len(fleet.samples) / cpu,
            }
        )
    base = rows_out[0]["cpu_s"] / rows_out[0]["sample_rows"]
    for row in rows_out:
        # 1.0 = linear growth; above 1 the cost per row grows with the history.
        row["per_row_ratio_vs_smallest"] = row["cpu_s"] / row["sample_rows"] / base
    return {"nodes": NODES, "rows": rows_out}
