"""One conformance test run over every registered detector (the river checks idea)."""

from __future__ import annotations

import copy

import joblib
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from predictor.detectors import REGISTRY, OnlineDetector, make_detector
from predictor.detectors.base import carry_learnt


def labelled_streams(seed: int = 0, n: int = 600, series: int = 4):
    """Noisy level-shifting series with rare spikes; label = spike."""
    rng = np.random.default_rng(seed)
    values = rng.normal(10, 1, size=(n, series)) + np.sin(np.arange(n) / 20)[:, None]
    labels = np.zeros((n, series), dtype=bool)
    for s in range(series):
        spikes = rng.choice(np.arange(n // 3, n), size=6, replace=False)
        values[spikes, s] += rng.choice([-1, 1], size=6) * 9
        labels[spikes, s] = True
    return values, labels


def run(detector: OnlineDetector, values: np.ndarray) -> np.ndarray:
    keys = np.arange(values.shape[1])
    out = np.zeros_like(values)
    for i, row in enumerate(values):
        out[i] = detector.score_learn_many(keys, row, np.full(len(keys), 60.0 * i))
    return out


@pytest.fixture(params=sorted(REGISTRY))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_scores_are_in_unit_interval_and_beat_chance(name: str) -> None:
    values, labels = labelled_streams()
    scores = run(make_detector(name), values)
    assert np.all((scores >= 0) & (scores <= 1))
    assert np.all(np.isfinite(scores))
    auc = roc_auc_score(labels[200:].ravel(), scores[200:].ravel())
    assert auc > 0.7, f"{name}: AUC {auc:.2f} on obvious spikes"


def test_scoring_does_not_mutate_state(name: str) -> None:
    values, _ = labelled_streams(n=120)
    detector = make_detector(name)
    run(detector, values)
    before = copy.deepcopy(detector)
    keys = np.arange(values.shape[1])
    probe = values[-1] + 5
    first = detector.score_many(keys, probe, np.full(len(keys), 1e6))
    second = detector.score_many(keys, probe, np.full(len(keys), 1e6))
    np.testing.assert_array_equal(first, second)
    # Scoring left the learnt state as it was: the next learn-and-score matches a copy's.
    np.testing.assert_array_equal(
        detector.score_learn_many(keys, probe, np.full(len(keys), 1e6)),
        before.score_learn_many(keys, probe, np.full(len(keys), 1e6)),
    )


def test_score_before_learn(name: str) -> None:
    """A sample is scored against the past only: learning it first would lower its score."""
    values, _ = labelled_streams(n=300, series=1)
    detector = make_detector(name)
    run(detector, values)
    key, ts = np.array([0]), np.array([1e6])
    spike = np.array([values[:, 0].mean() + 40])
    scored_first = detector.clone()
    run(scored_first, values)
    s = scored_first.score_learn_many(key, spike, ts)[0]
    assert s == detector.score_many(key, spike, ts)[0]


def test_clone_is_fresh_and_joblib_round_trip_keeps_state(name: str, tmp_path) -> None:
    values, _ = labelled_streams(n=150)
    detector = make_detector(name)
    run(detector, values)
    fresh = detector.clone()
    assert type(fresh) is type(detector) and repr(fresh) == repr(detector)
    keys = np.arange(values.shape[1])
    probe, ts = values[-1] + 3, np.full(len(keys), 1e7)
    path = tmp_path / "det.joblib"
    joblib.dump(detector, path)
    restored = joblib.load(path)
    np.testing.assert_array_equal(
        restored.score_many(keys, probe, ts), detector.score_many(keys, probe, ts)
    )
    # The clone has learnt nothing: it cannot yet tell the probe from normal.
    assert fresh.score_many(keys, probe, ts).max() <= detector.score_many(keys, probe, ts).max()


def test_what_it_learnt_carries_into_one_made_today(name: str) -> None:
    values, _ = labelled_streams(n=150)
    detector = make_detector(name)
    run(detector, values)
    carried = carry_learnt(make_detector(name), copy.deepcopy(detector))
    assert carried is not None
    keys = np.arange(values.shape[1] + 1)  # one series new to both
    for step in range(3):  # and both go on learning alike
        probe, ts = np.append(values[-1], 10.0) + 3 * step, np.full(len(keys), 1e7 + 60 * step)
        np.testing.assert_array_equal(
            carried.score_learn_many(keys, probe, ts), detector.score_learn_many(keys, probe, ts)
        )
    other = "ewma_z" if name != "ewma_z" else "range_break"
    assert carry_learnt(make_detector(other), detector) is None


def test_unknown_detector_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown detector"):
        make_detector("nope")
