"""The running service: query latency, and the largest fleet it keeps up with end to end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from benchmarks.common import (
    STEP_S,
    fleet_step,
    json_bodies,
    json_group_bodies,
    node_names,
    percentiles_ms,
    running_server,
    send_all,
)
from predictor.store import SQLiteStore

JSON = {"Content-Type": "application/json"}
PER_REQUEST = 1_000


def bench_queries(
    workdir: Path,
    *,
    n_nodes: int = 10_000,
    n_metrics: int = 20,
    n_steps: int = 3,
    requests: int = 300,
) -> dict[str, Any]:
    """p50/p99 of the risk queries on a scored fleet, against ``GET /healthz``."""
    rng = np.random.default_rng(2)
    t0 = time.time() - n_steps * STEP_S
    bodies = [
        body
        for k in range(n_steps)
        for body in json_bodies(fleet_step(n_nodes, n_metrics, k, t0=t0, rng=rng), 5_000)
    ]
    names = node_names(n_nodes)
    with running_server(workdir) as server, server.client() as client:
        send_all(server.base_url, "/v1/metrics", bodies, headers=JSON)
        if not server.wait_scored(client, timeout_s=600):
            raise RuntimeError("the scorer did not catch up")

        def timed(paths: list[str]) -> dict[str, float]:
            for path in paths[:10]:  # warm-up
                client.get(path).raise_for_status()
            seconds = []
            for path in paths:
                started = time.perf_counter()
                client.get(path).raise_for_status()
                seconds.append(time.perf_counter() - started)
            return percentiles_ms(seconds)

        baseline = timed(["/healthz"] * requests)
        fleet = timed(["/v1/risk?top=50"] * requests)
        picks = rng.choice(names, size=requests)
        node = timed([f"/v1/nodes/{n}/risk" for n in picks])
    for figures in (fleet, node):
        figures["p99_ratio_vs_healthz"] = figures["p99_ms"] / baseline["p99_ms"]
    return {"nodes": n_nodes, "healthz": baseline, "risk_top50": fleet, "node_risk": node}


def run_fleet(
    workdir: Path,
    *,
    n_nodes: int,
    n_metrics: int,
    intervals: int,
    interval_s: float,
    drain_timeout_s: float,
    shape: Literal["per-node", "samples"] = "per-node",
) -> dict[str, Any]:
    """Push one scrape of the fleet every ``interval_s`` and time how long scoring trails.

    ``lag_s`` of an interval is the time from its due moment until the scorer has scored
    everything acknowledged; the fleet is sustained when every interval is scored before
    the next one is due. ``shape``: ``per-node`` bodies (each node's scrape one object, as
    an agent on the node sends it) or ``samples`` (one object per sample).
    """
    rng = np.random.default_rng(3)
    t0 = time.time()
    encode = json_group_bodies if shape == "per-node" else json_bodies
    # Encoded before the clock starts: the client stands in for many scrapers.
    payloads = [
        encode(fleet_step(n_nodes, n_metrics, k, t0=t0, rng=rng), PER_REQUEST)
        for k in range(intervals)
    ]
    lags: list[float | None] = []
    send_s: list[float] = []
    # Two processes (`--role api` + `--role scorer`): on 2 cores, ingest and scoring each
    # get one instead of sharing one interpreter lock. Settings as the README recommends
    # for big fleets: risk history every 60 s (the latest risk stays per evaluation) and
    # scoring steps of up to 1M samples.
    with (
        running_server(
            workdir,
            split=True,
            max_unscored_rows="100000000",
            risk_history_every_s="60",
            scoring_chunk_rows="1000000",
        ) as server,
        server.client() as c,
    ):
        start = time.monotonic()
        for k, bodies in enumerate(payloads):
            due = start + k * interval_s
            time.sleep(max(0.0, due - time.monotonic()))
            send_s.append(send_all(server.base_url, "/v1/metrics", bodies, headers=JSON).seconds)
            next_due = due + interval_s
            caught_up = server.wait_scored(c, timeout_s=max(0.0, next_due - time.monotonic()))
            lags.append(time.monotonic() - due if caught_up else None)
        drain_started = time.monotonic()
        drained = server.wait_scored(c, timeout_s=drain_timeout_s, poll_s=0.2)
        backlog_s = time.monotonic() - drain_started
        last_due = start + (intervals - 1) * interval_s
        final_lag = time.monotonic() - last_due if drained else None
        peak_rss_mib = server.peak_rss_mib()
    # Nothing dropped: the log holds every acknowledged sample (each batch once).
    store = SQLiteStore(workdir / "predictor.db")
    stored = store.last_sample_rowid()
    store.close()
    per_interval = n_nodes * n_metrics
    return {
        "nodes": n_nodes,
        "shape": shape,
        "samples_per_interval": per_interval,
        "interval_s": interval_s,
        "intervals": intervals,
        "sustained": all(lag is not None for lag in lags),
        "lag_s": lags,
        "send_s": send_s,
        "final_lag_s": final_lag,
        "backlog_drain_s": backlog_s if drained else None,
        "offered_samples_per_s": per_interval / interval_s,
        "samples_sent": per_interval * intervals,
        "samples_stored": stored,
        "peak_rss_mib": peak_rss_mib,
    }


def bench_end_to_end(
    workdir: Path,
    *,
    ladder: tuple[int, ...] = (2_000, 5_000, 10_000, 20_000),
    big: int = 100_000,
    n_metrics: int = 20,
    intervals: int = 4,
    big_intervals: int = 2,
    interval_s: float = STEP_S,
    drain_timeout_s: float = 240.0,
) -> dict[str, Any]:
    """Climb the ladder of fleet sizes until one falls behind; then try the big fleet."""
    runs = []
    largest = 0
    for n_nodes in ladder:
        run = run_fleet(
            workdir / f"fleet-{n_nodes}", n_nodes=n_nodes, n_metrics=n_metrics,
            intervals=intervals, interval_s=interval_s, drain_timeout_s=drain_timeout_s,
        )  # fmt: skip
        runs.append(run)
        if not run["sustained"]:
            break
        largest = n_nodes
    big_kw: dict[str, Any] = dict(
        n_nodes=big, n_metrics=n_metrics, intervals=big_intervals, interval_s=interval_s,
        drain_timeout_s=drain_timeout_s,
    )  # fmt: skip
    if big and big not in [r["nodes"] for r in runs]:
        runs.append(run_fleet(workdir / f"fleet-{big}", **big_kw))
    big_run = runs[-1]
    if big_run["sustained"]:
        largest = max(largest, big_run["nodes"])
    if big:  # the same fleet one object per sample: the parse costs the API far more
        runs.append(run_fleet(workdir / f"fleet-{big}-samples", shape="samples", **big_kw))
    return {
        "metrics": n_metrics,
        "largest_sustained_nodes": largest,
        "largest_sustained_samples_per_s": largest * n_metrics / interval_s,
        # The big fleet's achieved rate: its samples over the time until all were scored.
        "big_fleet_samples_per_s": (
            big_run["samples_per_interval"]
            * big_run["intervals"]
            / ((big_run["intervals"] - 1) * interval_s + big_run["final_lag_s"])
            if big_run["final_lag_s"]
            else None
        ),  # fmt: skip
        "runs": runs,
    }
