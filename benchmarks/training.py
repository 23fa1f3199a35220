"""Batch training time as the number of feature rows grows.

A feature row is one node's snapshot in one ``train_step_s`` bucket (what the model fits
on). The history is simulated with one sample per series per bucket (a scrape every
``train_step_s``), so ``build_snapshots`` yields about ``nodes x steps`` rows; both grow
as the square root of the size asked for. Each size runs in a fresh process, so its peak
memory is its own.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from predictor.config import Settings
from predictor.simulate.fleet import FleetSpec, SimulatedFleet, simulate
from predictor.training.train import train


def history(feature_rows: int, *, step_s: float) -> SimulatedFleet:
    """A simulated, labelled fleet history that gives about ``feature_rows`` snapshots."""
    nodes = max(4, math.isqrt(feature_rows))
    steps = max(2, math.ceil(feature_rows / nodes))
    spec = FleetSpec(
        nodes=nodes, pools=min(4, nodes), step_s=step_s, duration_s=steps * step_s, seed=1,
        failure_rate_per_node_day=2.0,
    )  # fmt: skip
    return simulate(spec)


def _rss_mib() -> float:
    # ru_maxrss is in KiB on Linux: the peak of this process so far.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure(feature_rows: int, n_jobs: int) -> dict[str, Any]:
    """Simulate, then time ``train`` by stage (runs in its own process)."""
    settings = Settings(train_n_jobs=n_jobs)
    fleet = history(feature_rows, step_s=settings.train_step_s)
    rss_history = _rss_mib()
    stages: dict[str, float] = {}
    clock = {"name": "", "at": 0.0}

    def progress(name: str) -> None:
        now = time.perf_counter()
        if clock["name"]:
            stages[clock["name"]] = now - clock["at"]
        clock.update(name=name, at=now)

    started, started_cpu = time.perf_counter(), time.process_time()
    _, manifest, snaps, _ = train(
        samples=fleet.samples, events=fleet.events, settings=settings, progress=progress
    )
    wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    progress("")
    evaluation = manifest["evaluation"]
    return {
        "n_jobs": n_jobs,
        "nodes": int(fleet.samples["node"].nunique()),
        "sample_rows": len(fleet.samples),
        "feature_rows": len(snaps.ts),
        "wall_s": wall,
        "cpu_s": cpu,  # all threads; the machine may be shared
        "stage_wall_s": stages,
        "rows_per_s": len(snaps.ts) / wall,
        "rows_per_cpu_s": len(snaps.ts) / cpu,
        "rss_history_mib": rss_history,
        "peak_rss_mib": _rss_mib(),
        "holdout_average_precision": evaluation.get("average_precision"),
        "holdout_rows": evaluation["rows"],
    }


def bench_training(
    *, sizes: tuple[int, ...] = (1_000_000, 10_000_000), single_thread: bool = True
) -> dict[str, Any]:
    """Time of ``train`` per feature-row count with all cores; growth as time per row
    against the smallest. ``single_thread`` adds the smallest size on one core: threads
    only pay where the cores are free (on a shared machine they can cost more).
    """
    runs = [(rows, -1) for rows in sizes] + ([(sizes[0], 1)] if single_thread else [])
    rows_out = []
    # As `make train` runs it (see the Makefile); the child processes read it at start.
    wait_policy = os.environ.get("OMP_WAIT_POLICY", "passive")
    saved = os.environ.get("OMP_WAIT_POLICY")
    os.environ["OMP_WAIT_POLICY"] = wait_policy
    try:
        for rows, n_jobs in runs:
            # spawn: a forked child would inherit OpenMP state and the parent's memory peak.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                rows_out.append(pool.submit(_measure, rows, n_jobs).result())
    finally:
        if saved is None:
            del os.environ["OMP_WAIT_POLICY"]
    base = rows_out[0]["cpu_s"] / rows_out[0]["feature_rows"]
    base_wall = rows_out[0]["wall_s"] / rows_out[0]["feature_rows"]
    for row in rows_out:
        # 1.0 = linear growth; above 1 the cost per row grows with the history.
        row["per_row_ratio_vs_smallest"] = row["cpu_s"] / row["feature_rows"] / base
        row["per_row_wall_ratio_vs_smallest"] = row["wall_s"] / row["feature_rows"] / base_wall
    return {"cpus": os.cpu_count(), "omp_wait_policy": wait_policy, "rows": rows_out}
