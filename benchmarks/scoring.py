"""Online scoring throughput and the size of the online state, against river."""

from __future__ import annotations

import pickle
import sys
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from river import anomaly, preprocessing

from benchmarks.common import fleet_step
from predictor.config import Settings
from predictor.scoring import ScoringEngine

T0 = 1_764_115_200.0


def river_pipeline() -> Any:
    """river's HalfSpaceTrees with its defaults and a MinMaxScaler in front."""
    return preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees()


def river_rate(
    n_nodes: int, n_metrics: int, n_series: int, n_steps: int, warm_steps: int = 5
) -> tuple[float, list[Any]]:
    """Per-sample rate of river scoring then learning the same stream one sample at a time.

    Runs on the first ``n_series`` series of the fleet for ``warm_steps + n_steps`` steps
    and returns samples per CPU second over the last ``n_steps`` (extrapolated: river's
    cost per sample does not depend on the fleet size) and the fitted pipelines (for the
    state-size baseline).
    """
    rng = np.random.default_rng(0)
    models = [river_pipeline() for _ in range(n_series)]
    elapsed = 0.0
    for step in range(warm_steps + n_steps):
        batch = fleet_step(n_nodes, n_metrics, step, t0=T0, rng=rng)
        values = batch.value[:n_series].tolist()
        started = time.process_time()
        for model, value in zip(models, values, strict=True):
            x = {"x": value}
            model.score_one(x)
            model.learn_one(x)
        if step >= warm_steps:  # building the trees is a one-off per series
            elapsed += time.process_time() - started
    return n_series * n_steps / elapsed, models


def run_engine(
    detectors: list[str], n_nodes: int, n_metrics: int, warm_steps: int, steps: int
) -> tuple[ScoringEngine, dict[str, float]]:
    """Feed ``warm_steps + steps`` fleet scrapes through ``ScoringEngine.process``."""
    engine = ScoringEngine(settings=Settings(online_detectors=detectors))
    rng = np.random.default_rng(0)
    cold_cpu = wall = cpu = 0.0
    n_samples = 0
    for step in range(warm_steps + steps):
        batch = fleet_step(n_nodes, n_metrics, step, t0=T0, rng=rng)
        started, started_cpu = time.perf_counter(), time.process_time()
        engine.process(batch)
        step_wall, step_cpu = time.perf_counter() - started, time.process_time() - started_cpu
        if step == 0:
            cold_cpu = step_cpu
        if step >= warm_steps:
            wall += step_wall
            cpu += step_cpu
            n_samples += len(batch)
    return engine, {
        # CPU time: the machine may be shared; this is the rate of one busy core.
        "samples_per_cpu_s": n_samples / cpu if cpu else 0.0,
        "samples_per_wall_s": n_samples / wall if wall else 0.0,
        "first_step_samples_per_cpu_s": n_nodes * n_metrics / cold_cpu if cold_cpu else 0.0,
        "cpu_s": cpu,
        "samples": n_samples,
    }


def bench_scoring(
    *,
    n_nodes: int = 10_000,
    n_metrics: int = 20,
    warm_steps: int = 2,
    steps: int = 5,
    settings_to_try: tuple[tuple[str, ...], ...] = (("ewma_z",), ("ensemble",)),
    river_series: int = 100,
    river_steps: int = 30,
) -> dict[str, Any]:
    """Steady-state samples/s of the engine per detector setting, as a ratio to river."""
    river_per_s, _ = river_rate(n_nodes, n_metrics, river_series, river_steps)
    out: dict[str, Any] = {
        "nodes": n_nodes,
        "metrics": n_metrics,
        "steps_timed": steps,
        "river": {"samples_per_cpu_s": river_per_s, "samples": river_series * river_steps},
        "settings": {},
    }
    for detectors in settings_to_try:
        _, figures = run_engine(list(detectors), n_nodes, n_metrics, warm_steps, steps)
        figures["ratio_vs_river"] = figures["samples_per_cpu_s"] / river_per_s
        out["settings"]["+".join(detectors)] = figures
    return out


# -- memory ------------------------------------------------------------------------------
def deep_bytes(obj: Any) -> int:
    """Bytes held by ``obj`` and everything it references (numpy arrays by ``nbytes``)."""
    seen: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, np.ndarray):
            total += item.nbytes + sys.getsizeof(item) - (item.nbytes if item.base is None else 0)
            if item.dtype == object:
                stack.extend(item.ravel().tolist())
            continue
        total += sys.getsizeof(item)
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        elif hasattr(item, "__dict__") and not isinstance(item, type):
            stack.append(vars(item))
    return total


def state_sizes(engine: ScoringEngine, path: Path) -> dict[str, float]:
    """Bytes per series of the engine's online state, in memory and as a joblib dump."""
    n_series = engine.state.n_series
    joblib.dump(engine.state, path)
    dumped = path.stat().st_size
    path.unlink()
    return {
        "series": n_series,
        "bytes_per_series_memory": deep_bytes(engine.state) / n_series,
        "bytes_per_series_joblib": dumped / n_series,
    }


def bench_memory(
    workdir: Path,
    *,
    sizes: tuple[tuple[int, int], ...] = ((1_000, 20), (10_000, 20), (100_000, 5)),
    settings_to_try: tuple[tuple[str, ...], ...] = (("ewma_z",), ("ensemble",)),
    ensemble_max_series: int = 200_000,
    steps: int = 3,
) -> dict[str, Any]:
    """State bytes per node-metric at several fleet sizes, against a river HST per series."""
    _, models = river_rate(10, 1, 10, 10, warm_steps=300)  # past river's window: state full
    river_bytes = float(np.mean([len(pickle.dumps(m)) for m in models]))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for detectors in settings_to_try:
        for n_nodes, n_metrics in sizes:
            if detectors != settings_to_try[0] and n_nodes * n_metrics > ensemble_max_series:
                continue  # the biggest fleet runs only with the default detectors (time)
            engine, _ = run_engine(list(detectors), n_nodes, n_metrics, 0, steps)
            sizes_ = state_sizes(engine, workdir / "state.joblib")
            rows.append(
                {
                    "detectors": "+".join(detectors),
                    "nodes": n_nodes,
                    "metrics": n_metrics,
                    **sizes_,
                    "ratio_vs_river": sizes_["bytes_per_series_joblib"] / river_bytes,
                }
            )
            del engine
    return {"river_bytes_per_series_pickle": river_bytes, "steps": steps, "rows": rows}
