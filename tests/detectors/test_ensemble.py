"""The fused online detector and its members on small synthetic streams."""

from __future__ import annotations

import io

import joblib
import numpy as np
import pytest

from predictor.detectors import REGISTRY
from predictor.detectors.context_novelty import ContextNovelty
from predictor.detectors.ensemble import Ensemble
from predictor.detectors.ew_novelty import EwNovelty
from predictor.detectors.likelihood import AnomalyLikelihood
from predictor.detectors.range_break import RangeBreak
from predictor.detectors.seasonal import SeasonalNovelty

MEMBERS = [Ensemble, EwNovelty, ContextNovelty, SeasonalNovelty, RangeBreak]


def _stream(n_series: int = 8, n: int = 1500, seed: int = 0):
    """Noisy daily-periodic series with injected spikes and level shifts (labels)."""
    rng = np.random.default_rng(seed)
    ts = 300.0 * np.arange(n)
    base = 10 + 1 * np.sin(2 * np.pi * ts / 86400.0)
    values = base + rng.normal(0, 0.5, size=(n_series, n))
    labels = np.zeros((n_series, n), dtype=bool)
    for k in range(n_series):
        at = int(rng.integers(min(600, n - 60), n - 50))
        if k % 2:
            values[k, at] += 8.0
        else:
            values[k, at:] += 4.0
        labels[k, at] = True
    return values, ts, labels


def _run(det, values: np.ndarray, ts: np.ndarray) -> np.ndarray:
    keys = np.arange(values.shape[0])
    return np.stack(
        [
            det.score_learn_many(keys, values[:, i], np.full(len(keys), ts[i]))
            for i in range(len(ts))
        ],
        axis=1,
    )


def test_ensemble_finds_injected_anomalies() -> None:
    values, ts, labels = _stream()
    scores = _run(Ensemble(), values, ts)
    assert scores.min() >= 0.0 and scores.max() <= 1.0
    hits = 0
    for k in range(values.shape[0]):
        at = int(np.flatnonzero(labels[k])[0])
        # The alarm comes at the anomaly (or within the short average's reach) ...
        hits += scores[k, at : at + 10].max() >= 0.5
        # ... and normal samples after warm-up rarely look anything like it.
        assert (scores[k, 300:at] >= 0.5).sum() <= 2
    assert hits >= 6


@pytest.mark.parametrize("cls", MEMBERS)
def test_contract(cls) -> None:
    values, ts, _ = _stream(n_series=3, n=400)
    det = cls()
    _run(det, values, ts)
    keys = np.arange(3)
    x, t = values[:, -1] + 5.0, np.full(3, ts[-1] + 300.0)
    before = joblib.hash(det)
    first = det.score_many(keys, x, t)
    assert joblib.hash(det) == before  # scoring does not learn
    assert np.all((first >= 0) & (first <= 1))
    buf = io.BytesIO()
    joblib.dump(det, buf)
    buf.seek(0)
    again = joblib.load(buf)
    np.testing.assert_allclose(again.score_many(keys, x, t), first)
    fresh = det.clone()
    assert type(fresh) is cls and repr(fresh) == repr(det)
    assert np.all(fresh.score_many(keys, x, t) == 0.0)


def test_new_keys_grow_state() -> None:
    det = Ensemble()
    det.learn_many(np.array([5000]), np.array([1.0]), np.array([0.0]))
    assert det.score_many(np.array([0, 5000]), np.zeros(2), np.ones(2)).shape == (2,)


def test_registered() -> None:
    assert REGISTRY["ensemble"] is Ensemble


def test_likelihood_flags_a_jump_in_a_quiet_signal_and_fuses_by_max() -> None:
    lik = AnomalyLikelihood(2, warmup=20)
    lik.ensure(4)
    keys = np.arange(4)
    rng = np.random.default_rng(0)
    for _ in range(200):
        lik.score_learn(keys, [rng.uniform(0, 0.1, 4), rng.uniform(0, 0.1, 4)])
    raw = [np.array([0.05, 1.0, 0.05, 1.0]), np.array([0.05, 0.05, 1.0, 1.0])]
    per_signal = lik.score(keys, raw)
    fused = lik.score(keys, raw, fuse=True)
    np.testing.assert_allclose(fused, np.maximum(*per_signal))
    # One jump moves the 10-sample average by ~0.1, about 3.5 sigma here: tail ~2e-4.
    assert fused[0] < 0.1 and fused[1:].min() > 0.3


def _square_days(n_series: int, days: int, missing_day: int, seed: int = 0):
    """A daily square wave (a high plateau every afternoon) with one day's plateau missing."""
    rng = np.random.default_rng(seed)
    per_day = 288
    ts = 300.0 * np.arange(days * per_day)
    phase = (ts % 86400.0) / 86400.0
    high = (phase >= 0.4) & (phase < 0.7)
    values = 20.0 + 60.0 * high + rng.normal(0, 2.0, size=(n_series, len(ts)))
    day = ts // 86400.0
    gone = high & (day == missing_day)
    values[:, gone] -= 60.0
    return values, ts, gone


def test_a_day_that_breaks_a_strong_daily_pattern_is_flagged() -> None:
    # Every value of the missing plateau is an ordinary low value: only the profile of
    # the series' day says it is wrong.
    values, ts, gone = _square_days(n_series=3, days=8, missing_day=6)
    scores = _run(Ensemble(), values, ts)
    first = int(np.flatnonzero(gone)[0])
    # (The first alert silences its repeats: the max is that alert, near NAB's usual
    # operating thresholds of about 0.35.)
    assert scores[:, first : first + 30].max(axis=1).min() >= 0.35
    # The ordinary days before it raise nothing like that once the profile is known.
    assert scores[:, 3 * 288 : first].max() < 0.25


def test_seasonal_residual_follows_trusted_phases_only() -> None:
    det = SeasonalNovelty(buckets=4, min_seen=2, err_alpha=0.5)
    key = np.array([0])
    for i, x in enumerate([1.0, 1.0, 3.0]):  # one phase: visits 0 and 1 are untrusted
        det.learn_many(key, np.array([x]), np.array([10.0 * i]))
        assert np.isinf(det.err_[0]) == (i < 2)
    # The first trusted residual (3 - 1)^2 starts the average.
    assert det.err_[0] == pytest.approx(4.0)
    det.learn_many(key, np.array([1.0]), np.array([40.0]))
    assert np.isfinite(det.err_[0]) and det.err_[0] < 4.0


def test_seasonal_checkpoint_without_residual_loads() -> None:
    det = SeasonalNovelty()
    values, ts, _ = _stream(n_series=3, n=200)
    _run(det, values, ts)
    state = dict(vars(det))
    del state["err_"], state["err_alpha"]
    old = SeasonalNovelty.__new__(SeasonalNovelty)
    old.__setstate__(state)
    assert np.isinf(old.err_).all() and old.err_alpha == det.err_alpha
    keys, t = np.arange(3), np.full(3, ts[-1] + 300.0)
    np.testing.assert_array_equal(
        old.score_many(keys, values[:, -1], t), det.score_many(keys, values[:, -1], t)
    )
