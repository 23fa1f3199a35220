"""The scoring engine: risk per node, event-time evaluation, the batch-model input."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from predictor.config import Settings
from predictor.detectors import Breakout, RangeBreak, Sustained
from predictor.detectors.sustained import (
    _CAP,
    _FLOOR,
    _GZ,
    _HELD,
    _N,
    _NOISE,
    _SINCE,
    HELD_SHARE,
    STEP_NOISE,
)
from predictor.ingest import SampleBatch
from predictor.scoring import ScoringEngine
from predictor.simulate import FleetSpec, simulate
from predictor.training.train import build_snapshots, choose_metrics


def steady_fleet(steps: int, nodes: int = 4, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [
        (f"n{n}", metric, 60.0 * k, base + rng.normal(0, 0.01))
        for k in range(steps)
        for n in range(nodes)
        for metric, base in (("cpu", 0.3), ("memory", 0.5))
    ]
    return pd.DataFrame(rows, columns=["node", "metric", "ts", "value"])


def test_a_spike_raises_only_its_nodes_risk_and_names_the_metric(settings: Settings) -> None:
    engine = ScoringEngine(settings=settings)
    engine.process(SampleBatch.from_frame(steady_fleet(100)))
    spike = SampleBatch.from_columns(
        ["n0", "n0", "n1", "n1"], ["cpu", "memory", "cpu", "memory"], [6000.0] * 4,
        [0.3, 0.95, 0.3, 0.5],
    )  # fmt: skip
    risk = engine.process(spike).risk.set_index("node")
    assert risk.loc["n0", "risk"] > 0.9
    assert risk.loc["n1", "risk"] < 0.3
    assert risk.loc["n0", "why"][0]["metric"] == "memory"


def test_replay_in_one_batch_equals_live_step_by_step(settings: Settings) -> None:
    """Event-time buckets: the same history gives the same risk however it is batched."""
    history = steady_fleet(60)
    history.loc[history.sample(frac=0.05, random_state=1).index, "value"] += 0.5
    live = ScoringEngine(settings=settings)
    live_risk = pd.concat(
        [live.process(SampleBatch.from_frame(step)).risk for _, step in history.groupby("ts")]
    )
    replayed = ScoringEngine(settings=settings).process(SampleBatch.from_frame(history)).risk
    key = ["node", "ts"]
    a = live_risk.sort_values(key).reset_index(drop=True)
    b = replayed.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[[*key, "risk", "online"]], b[[*key, "risk", "online"]])


def test_evidence_sees_one_sample_per_evidence_step_whatever_the_scrape_interval(
    settings: Settings,
) -> None:
    """A 10 s scrape gives the evidence detectors the series a 60 s scrape would."""
    rng = np.random.default_rng(2)
    ts = 10.0 * np.arange(1800)
    values = 0.3 + 0.01 * rng.standard_normal(len(ts)) + np.where(ts > 12000, (ts - 12000) / 1e4, 0)
    every_minute = ts % 60 == 0
    evidence = []
    for keep in (np.ones(len(ts), dtype=bool), every_minute):
        engine = ScoringEngine(settings=settings.model_copy(update={"evidence_step_s": 60.0}))
        n = int(keep.sum())
        engine.process(SampleBatch.from_columns(["n0"] * n, ["m"] * n, ts[keep], values[keep]))
        evidence.append(engine.state.series_evidence[0])
    assert evidence[0] == evidence[1] > 0.5  # the ramp was seen, the same way


def test_a_scrape_at_the_evidence_step_with_jitter_feeds_every_sample(settings: Settings) -> None:
    # A 60 s scrape a little early or late around whole minutes: no sample may be skipped
    # (a skipped one would read as a missed scrape).
    ts = 60.0 * np.arange(1, 600) + np.random.default_rng(4).uniform(-0.5, 0.5, 599)
    values = 0.3 + 0.01 * np.random.default_rng(5).standard_normal(len(ts))
    detector_states = []
    for step in (60.0, 0.0):
        engine = ScoringEngine(settings=settings.model_copy(update={"evidence_step_s": step}))
        engine.process(SampleBatch.from_columns(["n0"] * len(ts), ["m"] * len(ts), ts, values))
        detector_states.append(engine.state.evidence_detectors[0].inner_.columns_[:, 0])
    np.testing.assert_array_equal(*detector_states)


def test_out_of_order_sample_is_scored_zero_and_changes_nothing(settings: Settings) -> None:
    engine = ScoringEngine(settings=settings)
    engine.process(SampleBatch.from_frame(steady_fleet(30, nodes=1)))
    before = engine.state.features.values_.copy()
    late = SampleBatch.from_columns(["n0"], ["cpu"], [60.0], [99.0])
    assert engine.process(late).sample_scores.tolist() == [0.0]
    np.testing.assert_array_equal(engine.state.features.values_, before)


def test_new_metrics_and_nodes_appear_any_time(settings: Settings) -> None:
    engine = ScoringEngine(settings=settings)
    engine.process(SampleBatch.from_columns(["a"], ["x"], [0.0], [1.0]))
    out = engine.process(SampleBatch.from_columns(["b", "a"], ["y", "z"], [10.0, 10.0], [2.0, 3.0]))
    assert sorted(out.risk["node"]) == ["a", "b"]
    assert engine.node_names() == ["a", "b"]


@pytest.mark.slow
def test_engine_features_equal_the_training_snapshots() -> None:
    """The batch model sees online exactly what it was trained on."""
    fleet = simulate(FleetSpec(nodes=4, duration_s=6 * 3600, step_s=60.0, seed=3))
    metrics = choose_metrics(fleet.samples)
    snaps = build_snapshots(
        fleet.samples, fleet.events, metrics=metrics, step_s=60.0, horizon_s=3600.0
    )
    engine = ScoringEngine(settings=Settings(eval_step_s=60.0, online_detectors=["ewma_z"]))
    engine._slots = {m: i for i, m in enumerate(metrics)}
    online_rows = []
    for _, step in fleet.samples.groupby(np.floor(fleet.samples["ts"] / 60.0)):
        result = engine.process(SampleBatch.from_frame(step))
        ids = np.array(sorted(engine.state.node_ids[n] for n in result.risk["node"]))
        names = np.array(engine.node_names(), dtype=object)[ids]
        X = engine.node_features(ids)
        online_rows += [
            (n, t, x) for n, t, x in zip(names, engine.state.node_ts[ids], X, strict=True)
        ]
    online = {(n, t): x for n, t, x in online_rows}
    assert len(online) == len(snaps.ts)
    for node, ts, x in zip(snaps.nodes, snaps.ts, snaps.X, strict=True):
        np.testing.assert_allclose(online[(node, ts)], x, rtol=1e-7, atol=1e-9, equal_nan=True)


def test_a_checkpoint_from_before_restart_counts_noise_floors_and_evidence_sampling_loads(
    settings: Settings,
) -> None:
    engine = ScoringEngine(settings=settings)
    engine.process(SampleBatch.from_frame(steady_fleet(40)))
    state = engine.state
    series_metric = state.series_metric[: state.n_series].copy()
    later = steady_fleet(41).query("ts == 2400.0")
    expected = copy.deepcopy(engine).process(SampleBatch.from_frame(later)).risk
    # What an older version wrote: series by name in a dict, their metric names, no
    # last-fed times; in the detector no restart count, no slow-falling noise floor, no
    # held-back silence, no recent clipped moves and no slope read move by move (its last
    # five rows), no cap on a step's share of the noise and no share of a silence held.
    metrics, nodes = list(state.metric_ids), list(state.node_ids)
    state.__dict__["series_ids"] = {
        (nodes[state.series_node[k]], metrics[m]): k for k, m in enumerate(series_metric)
    }
    state.__dict__["series_metric"] = [metrics[m] for m in series_metric]
    del state.__dict__["n_series"]
    del state.__dict__["series_evidence_ts"]
    inner = state.evidence_detectors[0].inner_
    inner.columns_ = inner.columns_[:-5].copy()
    del inner.__dict__["held_fade"]
    del inner.__dict__["step_noise"]
    del inner.__dict__["held_share"]
    restored = pickle.loads(pickle.dumps(state))
    assert restored.evidence_detectors[0].inner_.step_noise == STEP_NOISE
    assert restored.evidence_detectors[0].inner_.held_share == HELD_SHARE
    assert np.isneginf(restored.series_evidence_ts).all()
    columns = restored.evidence_detectors[0].inner_.columns_
    np.testing.assert_array_equal(columns[_SINCE], columns[_N])
    np.testing.assert_array_equal(columns[_FLOOR], columns[_NOISE])
    assert not columns[_HELD].any()
    np.testing.assert_array_equal(columns[_CAP], columns[_NOISE])
    assert np.abs(columns[_GZ]).max() <= restored.evidence_detectors[0].inner_.clip
    assert restored.n_series == len(series_metric)
    np.testing.assert_array_equal(restored.series_metric, series_metric)
    engine.state = restored
    risk = engine.process(SampleBatch.from_frame(later)).risk
    assert len(risk) == 4
    assert risk["why"].tolist() == expected["why"].tolist()


def test_a_checkpoint_goes_on_with_todays_parameters_and_detector_list(
    settings: Settings,
) -> None:
    engine = ScoringEngine(settings=settings)
    engine.process(SampleBatch.from_frame(steady_fleet(80)))
    # What a version with other defaults learnt and wrote.
    breakout = engine.state.evidence_detectors[0]
    breakout.hold, breakout.inner_.freeze = 0.4, 0.4
    learnt = breakout.inner_.columns_.copy()
    seen = engine.state.detectors[0].count_.copy()
    state = pickle.loads(pickle.dumps(engine.state))
    today = ScoringEngine(
        settings=settings.model_copy(update={"online_detectors": ["range_break", "ewma_z"]})
    )
    assert today.adopt(state) == ["range_break"]
    range_break, ewma_z = today.state.detectors
    assert isinstance(range_break, RangeBreak) and not range_break.count_.any()
    np.testing.assert_array_equal(ewma_z.count_, seen)
    breakout = today.state.evidence_detectors[0]
    assert (breakout.hold, breakout.inner_.freeze) == (Breakout().hold, Sustained().freeze)
    np.testing.assert_array_equal(breakout.inner_.columns_, learnt)
    later = SampleBatch.from_frame(steady_fleet(81).query("ts == 4800.0"))
    assert len(today.process(later).risk) == 4


def test_a_detector_learnt_under_another_layout_starts_afresh(settings: Settings) -> None:
    engine = ScoringEngine(settings=settings)
    engine.state.evidence_detectors = [Breakout(held_for=5)]  # five recent values a series
    engine.process(SampleBatch.from_frame(steady_fleet(80)))
    today = ScoringEngine(settings=settings)
    assert today.adopt(pickle.loads(pickle.dumps(engine.state))) == ["breakout"]
    breakout = today.state.evidence_detectors[0]
    assert breakout.held_for == Breakout().held_for and not breakout.state_.any()
    later = SampleBatch.from_frame(steady_fleet(81).query("ts == 4800.0"))
    assert len(today.process(later).risk) == 4


class ConvincedModel:
    """A failure model that is sure every node fails (a classifier fooled by a node unlike
    those it learnt from): no anomaly, P(fail) 0.95."""

    metrics = ["cpu", "memory"]

    def anomaly_score(self, X: np.ndarray) -> np.ndarray:
        return np.zeros(len(X))

    def failure_probability(self, X: np.ndarray) -> np.ndarray:
        return np.full(len(X), 0.95)


@pytest.mark.parametrize("gate", [0.3, 0.0])
def test_the_failure_model_counts_in_full_only_with_evidence_on_the_node(
    settings: Settings, gate: float
) -> None:
    engine = ScoringEngine(
        settings=settings.model_copy(update={"classifier_evidence_gate": gate}),
        model=ConvincedModel(),  # type: ignore[arg-type]
    )
    history = steady_fleet(180)
    # n0's memory starts to climb after two hours: a leak its own series shows.
    leaking = (history["node"] == "n0") & (history["metric"] == "memory")
    history.loc[leaking, "value"] += np.clip(history.loc[leaking, "ts"] - 7200.0, 0, None) * 1e-4
    risk = engine.process(SampleBatch.from_frame(history)).risk
    steady = risk[(risk["node"] != "n0") | (risk["ts"] < 7200.0)]
    n0 = risk[(risk["node"] == "n0") & (risk["ts"] >= 7200.0)]
    if gate == 0:  # the classifier alone drives every node past the drain threshold
        assert steady["risk"].min() > 0.9
    else:
        assert steady["risk"].max() < 0.5
        # ``why`` says so: the failure model's P(fail), and the part of it counted.
        model_entry = steady["why"].iloc[-1][0]
        assert model_entry["metric"] == "failure_model" and model_entry["score"] == 0.95
        assert model_entry["counted"] < 0.3
        # Once the node's own evidence is there, the classifier counts: the leaking node
        # crosses the drain threshold before the evidence alone (no model) takes it there.
        alone = ScoringEngine(settings=settings).process(SampleBatch.from_frame(history)).risk
        alone_n0 = alone[(alone["node"] == "n0") & (alone["ts"] >= 7200.0)]
        first = n0.loc[n0["risk"] >= 0.8, "ts"].min()
        assert first < alone_n0.loc[alone_n0["risk"] >= 0.8, "ts"].min()


@pytest.mark.parametrize("gate", [-0.1, 1.5])
def test_an_evidence_gate_outside_0_1_is_refused(gate: float) -> None:
    with pytest.raises(ValidationError, match="classifier_evidence_gate"):
        Settings(classifier_evidence_gate=gate)


def test_missed_scrapes_at_a_10s_scrape_build_the_gap_evidence_they_build_at_60s(
    settings: Settings,
) -> None:
    """Evidence is fed by samples received, not seconds: dropped 10 s scrapes show."""
    minutes_to_evidence = {}
    for scrape in (60.0, 10.0):
        rng = np.random.default_rng(3)
        ts = np.arange(0.0, 6 * 3600.0, scrape)
        # From the third hour on the node drops a growing share of its scrapes (to 40%).
        drop_p = np.clip((ts - 2 * 3600.0) / (4 * 3600.0), 0, 1) * 0.4
        keep = rng.random(len(ts)) >= drop_p
        values = 0.3 + 0.01 * rng.standard_normal(len(ts))
        engine = ScoringEngine(settings=settings)
        for start in np.arange(0.0, ts[-1], 300.0):  # five minutes at a time
            part = keep & (ts >= start) & (ts < start + 300.0)
            n = int(part.sum())
            engine.process(SampleBatch.from_columns(["n0"] * n, ["m"] * n, ts[part], values[part]))
            if engine.state.series_evidence[0] >= 0.5:
                minutes_to_evidence[scrape] = (start + 300.0 - 7200.0) / 60
                break
    # Fed by seconds, the 10 s scrape needed nearly twice as long (185 vs 95 minutes).
    assert minutes_to_evidence[10.0] <= 1.3 * minutes_to_evidence[60.0]


@pytest.mark.parametrize("scrape", [60.0, 10.0])
def test_a_node_back_from_an_outage_is_not_held_at_risk_by_the_gap(
    settings: Settings, scrape: float
) -> None:
    """The silence of a failure is not evidence once the node is back: it can be undrained
    after ``recovery_s`` and stops counting against its pool's budget."""
    rng = np.random.default_rng(4)
    ts = np.arange(0.0, 5 * 3600.0, scrape)
    up = (ts < 3 * 3600.0) | (ts >= 3 * 3600.0 + 20 * 60.0)  # down for 20 minutes
    values = 0.3 + 0.01 * rng.standard_normal(len(ts))
    engine = ScoringEngine(settings=settings)
    after_return = []
    for start in np.arange(0.0, ts[-1], 300.0):
        part = up & (ts >= start) & (ts < start + 300.0)
        n = int(part.sum())
        risk = engine.process(
            SampleBatch.from_columns(["n0"] * n, ["m"] * n, ts[part], values[part])
        ).risk
        if start >= 3 * 3600.0 + 20 * 60.0:
            after_return.extend(risk["risk"])
    assert after_return and max(after_return) < settings.exit_threshold
