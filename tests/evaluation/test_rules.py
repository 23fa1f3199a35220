"""Static threshold rules on tiny hand-made series."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from predictor.evaluation.rules import (
    DEFAULT_RULES,
    canonical_kind,
    firings,
    predict_linear,
    rule_drains,
    rule_firings,
)
from predictor.simulate import CANONICAL_METRICS, PROMETHEUS_NAMES

STEP = 60.0
T0 = 1_764_115_200.0


def _rule(name_start: str):
    return next(r for r in DEFAULT_RULES if r.name.startswith(name_start))


DISK = (_rule("disk > 0.9"),)
PREDICT = (_rule("predict_linear"),)
LATENCY = (_rule("latency_p99"),)


def _frame(values: np.ndarray, metric: str = "disk", node: str = "n1") -> pd.DataFrame:
    ts = T0 + np.arange(len(values)) * STEP
    return pd.DataFrame({"node": node, "metric": metric, "ts": ts, "value": values})


def test_every_canonical_metric_is_known_under_both_namings() -> None:
    for kind in CANONICAL_METRICS:
        assert canonical_kind(kind) == kind
        assert canonical_kind(PROMETHEUS_NAMES[kind]) == kind
    assert canonical_kind("my_custom_gauge") is None


def test_predict_linear_is_least_squares_over_the_range() -> None:
    rng = np.random.default_rng(3)
    ts = np.sort(rng.uniform(0, 7200, 300))
    values = 0.3 + 1e-5 * ts + rng.normal(0, 0.01, len(ts))
    series = np.zeros(len(ts), dtype=np.int64)
    got = predict_linear(series, ts, values, range_s=3600, ahead_s=1800)
    i = len(ts) - 1
    inside = ts > ts[i] - 3600
    slope, intercept = np.polyfit(ts[inside], values[inside], 1)
    assert got[i] == pytest.approx(intercept + slope * (ts[i] + 1800), rel=1e-6)


def test_predict_linear_keeps_series_apart() -> None:
    ts = np.array([0.0, 60, 120, 0, 60, 120])
    series = np.array([0, 0, 0, 1, 1, 1])
    values = np.array([0.0, 0.1, 0.2, 0.5, 0.5, 0.5])  # rising, then flat
    got = predict_linear(series, ts, values, range_s=3600, ahead_s=600)
    assert np.isnan(got[0]) and np.isnan(got[3])  # one sample is no line
    assert got[2] == pytest.approx(1.2)
    assert got[5] == pytest.approx(0.5)


def test_a_disk_filling_up_fires_predict_linear_hours_before_the_plain_threshold() -> None:
    # From 50% to full in 8 hours, then a steady full disk.
    ramp = np.linspace(0.5, 1.0, int(8 * 3600 / STEP))
    samples = _frame(np.r_[np.full(120, 0.5), ramp])
    early = rule_firings(samples, PREDICT)
    late = rule_firings(samples, DISK)
    assert len(early) == 1 and len(late) == 1  # one episode each
    assert late["ts"].iloc[0] - early["ts"].iloc[0] > 2 * 3600


def test_a_flat_high_disk_does_not_fire_predict_linear() -> None:
    samples = _frame(np.full(600, 0.95))
    assert rule_firings(samples, PREDICT).empty
    assert len(rule_firings(samples, DISK)) == 1


def test_a_sawtooth_that_drops_before_five_minutes_never_fires_the_threshold() -> None:
    # Log rotation: climbs over an hour to 0.93, above 0.9 for 3 samples, then drops.
    tooth = np.r_[np.linspace(0.6, 0.89, 60), np.full(3, 0.93), np.full(5, 0.6)]
    assert (tooth > 0.9).sum() < 300 / STEP
    samples = _frame(np.tile(tooth, 5))
    assert rule_firings(samples, DISK).empty


def test_a_sawtooth_above_the_threshold_for_long_fires_once_per_tooth() -> None:
    tooth = np.r_[np.linspace(0.6, 0.95, 60), np.full(15, 0.95), np.full(5, 0.6)]
    samples = _frame(np.tile(tooth, 3))
    fired = rule_firings(samples, DISK)
    assert len(fired) == 3
    # Each at the first sample where the condition has held for the full 5 minutes.
    held = samples["value"].to_numpy() > 0.9
    for ts in fired["ts"]:
        i = int((ts - T0) / STEP)
        assert held[i - 5 : i + 1].all() and not held[i - 6 : i + 1].all()


def test_a_gap_longer_than_staleness_restarts_the_for_clock() -> None:
    ts = np.r_[np.arange(4) * STEP, 4 * STEP + 600 + np.arange(4) * STEP]
    series = np.zeros(len(ts), dtype=np.int64)
    holds = np.ones(len(ts), dtype=bool)
    assert firings(series, ts, holds, for_s=300).size == 0
    # Without the staleness cut the clock runs across the gap: first sample after it.
    assert firings(series, ts, holds, for_s=300, stale_s=10_000).tolist() == [4]


def test_series_are_independent_whatever_their_order() -> None:
    # n1 is hot late, n2 early: n2's episode must not be measured from n1's start.
    late, early = np.full(120, 0.5), np.full(120, 0.5)
    late[100:] = 0.97
    early[10:30] = 0.97
    samples = pd.concat([_frame(late, "cpu", "n1"), _frame(early, "cpu", "n2")])
    fired = rule_firings(samples, (_rule("cpu"),))
    assert sorted(zip(fired["node"], fired["ts"], strict=True)) == [
        ("n1", T0 + 105 * STEP),
        ("n2", T0 + 15 * STEP),
    ]


def test_latency_three_times_its_median() -> None:
    base = np.full(600, 0.1)
    mild = base.copy()
    mild[400:420] = 0.25  # 2.5x its median: not enough
    bad = base.copy()
    bad[400:420] = 0.5
    assert rule_firings(_frame(mild, "latency_p99"), LATENCY).empty
    fired = rule_firings(_frame(bad, "latency_p99"), LATENCY)
    assert fired["ts"].tolist() == [T0 + 405 * STEP]


def test_rules_work_the_same_on_prometheus_names() -> None:
    ramp = np.r_[np.full(120, 0.5), np.linspace(0.5, 1.0, 480)]
    simple = rule_firings(_frame(ramp, "disk"))
    renamed = rule_firings(_frame(ramp, PROMETHEUS_NAMES["disk"]))
    assert len(simple) >= 2
    pd.testing.assert_frame_equal(simple, renamed)


def test_unknown_metrics_fire_nothing() -> None:
    assert rule_firings(_frame(np.full(100, 5.0), "queue_depth")).empty


def test_cooldown_merges_rules_firing_together_into_one_drain() -> None:
    hot = np.r_[np.full(60, 0.5), np.full(60, 0.97)]
    samples = pd.concat(
        [_frame(hot, "cpu"), _frame(hot, "memory"), _frame(np.full(120, 0.5), "cpu", "n2")]
    )
    assert len(rule_firings(samples)) == 2
    drains = rule_drains(samples, cooldown_s=900)
    assert drains["node"].tolist() == ["n1"]
    assert len(rule_drains(samples, cooldown_s=0)) == 2
