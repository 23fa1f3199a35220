"""The fleet simulator: determinism, streaming equivalence, labelled failures and traps."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest

from predictor.simulate import (
    FAILURE_MODES,
    PRECURSOR_METRIC,
    PROMETHEUS_NAMES,
    FleetSpec,
    SimulatedFleet,
    iter_steps,
    simulate,
)

HOUR = 3600.0
# Many failures on few nodes, so that every mode shows up in one short simulation.
BUSY = FleetSpec(nodes=12, pools=3, duration_s=24 * HOUR, seed=7, failure_rate_per_node_day=2.0)


class Fleet(SimulatedFleet):
    """A simulated fleet that can quickly look up one node's metric over a time range."""

    @functools.cached_property
    def _by_series(self) -> dict[tuple[str, str], pd.DataFrame]:
        return dict(list(self.samples.groupby(["node", "metric"])))

    def series(self, node: str, metric: str, start: float, end: float) -> pd.Series:
        """Values of ``node``'s ``metric`` with ``start <= ts < end``."""
        rows = self._by_series[(node, metric)]
        ts = rows["ts"].to_numpy()
        return rows["value"].iloc[np.searchsorted(ts, start) : np.searchsorted(ts, end)]


def fleet_of(spec: FleetSpec) -> Fleet:
    return Fleet(**vars(simulate(spec)))


@pytest.fixture(scope="module")
def busy() -> Fleet:
    return fleet_of(BUSY)


@pytest.fixture(scope="module")
def default_fleet() -> Fleet:
    return fleet_of(FleetSpec(seed=11))


def outages(fleet: SimulatedFleet) -> list[tuple[str, str, float, float]]:
    """(node, mode, down_ts, recovery_ts) for each failure or maintenance."""
    spans = []
    for node, events in fleet.events.groupby("node"):
        rows = events.to_dict("records")
        for down, up in zip(rows, rows[1:], strict=False):
            if down["kind"] in ("failure", "maintenance") and up["kind"] == "recovery":
                spans.append((str(node), down["mode"], down["ts"], up["ts"]))
    return spans


def test_same_spec_gives_identical_fleet() -> None:
    spec = FleetSpec(nodes=6, pools=2, duration_s=6 * HOUR, seed=3, failure_rate_per_node_day=3)
    first, second = simulate(spec), simulate(spec)
    for name in ("samples", "events", "nodes", "traps"):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(second, name))


def test_different_seeds_give_different_fleets() -> None:
    spec = FleetSpec(nodes=6, pools=2, duration_s=12 * HOUR, seed=3, failure_rate_per_node_day=3)
    first, other = simulate(spec), simulate(FleetSpec(**{**spec.__dict__, "seed": 4}))
    assert not first.samples["value"].head(1000).equals(other.samples["value"].head(1000))
    assert not first.events["ts"].equals(other.events["ts"])


def test_iter_steps_yields_exactly_the_simulated_fleet() -> None:
    modes = ("patchy_data", "memory_leak", "sudden_crash")
    spec = FleetSpec(nodes=8, duration_s=6 * HOUR, seed=5, failure_rate_per_node_day=6, modes=modes)
    fleet = simulate(spec)
    steps = list(iter_steps(spec))
    step_ts = np.array([ts for ts, _, _ in steps])
    samples = pd.concat([s for _, s, _ in steps], ignore_index=True)
    events = pd.concat([e for _, _, e in steps], ignore_index=True)
    pd.testing.assert_frame_equal(samples, fleet.samples)
    pd.testing.assert_frame_equal(events, fleet.events)
    assert np.array_equal(step_ts, spec.start_ts + spec.step_s * np.arange(spec.n_steps))
    # A late (patchy) sample still belongs to its own step; events sit on their step.
    own_ts = np.repeat(step_ts, [len(s) for _, s, _ in steps])
    late = samples["ts"].to_numpy() - own_ts
    assert late.min() >= 0 and late.max() < spec.step_s and late.max() > 0
    assert np.array_equal(events["ts"], np.repeat(step_ts, [len(e) for _, _, e in steps]))


def test_samples_are_typed_and_sorted(busy: Fleet) -> None:
    s = busy.samples
    assert list(s.columns) == ["node", "metric", "ts", "value"]
    assert s["ts"].dtype == np.float64 and s["value"].dtype == np.float64
    assert pd.api.types.is_string_dtype(s["node"]) and pd.api.types.is_string_dtype(s["metric"])
    assert s.sort_values(["ts", "node", "metric"], kind="stable").index.equals(s.index)
    assert set(s["metric"].unique()) == set(PRECURSOR_METRIC.values()) | {"cpu"}
    assert set(busy.nodes.columns) >= {"node", "pool", "lb_backend", "lb_server", "standby"}
    assert busy.nodes["health_url"].isna().all()
    for node, pool, standby in busy.nodes[["node", "pool", "standby"]].itertuples(index=False):
        if standby is not None:
            assert standby != node
            assert busy.nodes.set_index("node").loc[standby, "pool"] == pool


def test_every_mode_fails_with_its_precursor_visible(busy: Fleet) -> None:
    failures = busy.events[busy.events["kind"] == "failure"]
    assert set(failures["mode"]) == set(FAILURE_MODES)
    for f in failures.itertuples():
        if f.mode == "sudden_crash":
            assert np.isnan(f.precursor_start_ts)
            continue
        window = f.ts - f.precursor_start_ts
        assert 19 * 60 <= window <= 3 * HOUR + 60, f
        if f.mode == "patchy_data":
            mine = busy.samples[busy.samples["node"] == f.node]
            late = mine[mine["ts"].between(f.ts - 0.2 * window, f.ts, inclusive="left")]
            expected = 0.2 * window / BUSY.step_s * 6
            assert len(late) < 0.6 * expected, f
            assert (late["ts"] % BUSY.step_s > 0).any(), "patchy samples arrive late"
            continue
        metric = PRECURSOR_METRIC[f.mode]
        before = busy.series(f.node, metric, f.precursor_start_ts - HOUR, f.precursor_start_ts)
        end = busy.series(f.node, metric, f.ts - 0.1 * window, f.ts)
        assert len(before) > 300 and len(end) >= 3, f
        if f.mode in ("memory_leak", "disk_fill"):
            assert end.iloc[-1] >= 0.98 and end.mean() > before.max(), f
        elif f.mode == "error_rate":
            assert end.mean() > before.max() + 0.05, f
        elif f.mode == "latency_degradation":
            assert end.median() > 3 * before.median(), f
        elif f.mode == "thermal":
            assert end.iloc[-1] >= 88 and end.mean() > before.max() + 15, f


def test_nodes_are_silent_while_down_and_recover_to_baseline(busy: Fleet) -> None:
    spans = outages(busy)
    assert len(spans) == (busy.events["kind"] == "recovery").sum()
    s = busy.samples
    for node, mode, down, up in spans:
        mine = s[s["node"] == node]
        assert not ((mine["ts"] >= down) & (mine["ts"] < up)).any(), (node, down)
        assert (mine["ts"] == up).any(), "resumes right at the recovery"
        assert (2 if mode == "maintenance" else 10) * 60 <= up - down <= 30 * 60
        if mode in PRECURSOR_METRIC:
            metric = PRECURSOR_METRIC[mode]
            failing = busy.series(node, metric, down - 60, down).mean()
            after = busy.series(node, metric, up, up + 600).median()
            before = busy.series(node, metric, 0, np.inf).median()  # its usual level
            assert abs(after - before) < abs(failing - after), (node, mode)


def test_traps_look_alarming_on_nodes_that_never_fail(default_fleet: Fleet) -> None:
    fleet = default_fleet
    failed = set(fleet.events.loc[fleet.events["kind"] == "failure", "node"])
    healthy = fleet.samples[~fleet.samples["node"].isin(failed)]
    peak = healthy.groupby("metric")["value"].max()
    assert peak["cpu"] >= 0.99
    assert peak["memory"] >= 0.85
    assert peak["disk"] >= 0.85
    assert peak["temperature"] >= 70
    assert (
        peak["latency_p99"] > 5 * healthy.loc[healthy["metric"] == "latency_p99", "value"].median()
    )
    assert peak["error_rate"] > 0.03
    assert {"batch_job", "deploy", "high_baseline", "log_rotation", "memory_gc"} <= set(
        fleet.traps["kind"]
    )
    assert (fleet.events["kind"] == "maintenance").any()


def test_batch_jobs_pin_cpu_without_failing(default_fleet: Fleet) -> None:
    fleet = default_fleet
    failures = fleet.events[fleet.events["kind"] == "failure"]
    jobs = fleet.traps[fleet.traps["kind"] == "batch_job"]
    assert len(jobs) >= 3
    for job in jobs.itertuples():
        assert fleet.series(job.node, "cpu", job.start_ts, job.end_ts).median() > 0.93
        mine = failures[failures["node"] == job.node]
        assert not mine["ts"].between(job.start_ts, job.end_ts + HOUR).any()


def test_deploy_hits_a_whole_pool_at_once(default_fleet: Fleet) -> None:
    fleet = default_fleet
    deploy = fleet.traps[fleet.traps["kind"] == "deploy"].iloc[0]
    deploys = fleet.traps[fleet.traps["kind"] == "deploy"]
    members = deploys.loc[deploys["start_ts"] == deploy.start_ts, "node"]
    pool = fleet.nodes.set_index("node").loc[deploy.node, "pool"]
    assert set(members) == set(fleet.nodes.loc[fleet.nodes["pool"] == pool, "node"])
    for node in members:
        during = fleet.series(node, "error_rate", deploy.start_ts, deploy.end_ts).median()
        before = fleet.series(node, "error_rate", deploy.start_ts - HOUR, deploy.start_ts).median()
        assert during > before + 0.02


def test_log_rotation_makes_a_daily_sawtooth(default_fleet: Fleet) -> None:
    fleet = default_fleet
    node = fleet.traps.loc[fleet.traps["kind"] == "log_rotation", "node"].iloc[0]
    disk = fleet.series(node, "disk", 0, np.inf).to_numpy()
    drops = np.diff(disk) < -0.03
    assert 1 <= drops.sum() <= 3  # one rotation a day (plus at most a disk_fill recovery)


def test_without_traps_the_fleet_is_plain() -> None:
    fleet = simulate(FleetSpec(nodes=10, pools=2, duration_s=24 * HOUR, seed=2, traps=False))
    failed = set(fleet.events.loc[fleet.events["kind"] == "failure", "node"])
    healthy = fleet.samples[~fleet.samples["node"].isin(failed)]
    assert healthy.loc[healthy["metric"] == "cpu", "value"].max() < 0.8
    assert set(fleet.events["kind"]) <= {"failure", "recovery"}
    assert fleet.traps.empty


def test_prometheus_naming_renames_only() -> None:
    simple_spec = FleetSpec(nodes=4, pools=2, duration_s=2 * HOUR, seed=9)
    simple = simulate(simple_spec).samples
    prom = simulate(FleetSpec(**{**simple_spec.__dict__, "naming": "prometheus"})).samples
    assert set(prom["metric"]) == set(PROMETHEUS_NAMES.values())
    renamed = simple.assign(metric=simple["metric"].map(PROMETHEUS_NAMES))
    renamed = renamed.sort_values(["ts", "node", "metric"], ignore_index=True)
    pd.testing.assert_frame_equal(renamed, prom, check_dtype=False)


@pytest.mark.parametrize(
    "bad",
    [{"nodes": 0}, {"pools": 5, "nodes": 4}, {"step_s": 0}, {"naming": "otel"}, {"modes": ()}],
)
def test_rejects_impossible_specs(bad: dict) -> None:
    with pytest.raises(ValueError):
        FleetSpec(**bad)
