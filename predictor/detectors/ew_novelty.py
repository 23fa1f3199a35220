"""Exponentially weighted surprise of a value and of its change."""

from __future__ import annotations

import numpy as np

from predictor.detectors.base import OnlineDetector, grow, rows_of


class EwNovelty(OnlineDetector):
    """|z| of the value and of its first difference against EW moments.

    ``raw_many`` gives the two raw signals ``|z_value|`` and ``|z_diff|`` (capped) for the
    ensemble, as a list of arrays; ``score_many`` squashes their maximum into ``[0, 1]``
    for standalone use.

    Parameters
    ----------
    alpha
        Weight of each new sample in the running mean and variances (after a running
        equal-weight average over the first ``1 / alpha`` samples).
    cap
        Largest |z| reported, so one huge outlier cannot dominate the long-term
        statistics of the signal downstream.
    rel_floor
        Floor on the standard deviation relative to the mean level: a flat series
        should not turn a change of a rounding step into an enormous z.
    """

    n_signals = 2

    def __init__(self, alpha: float = 0.01, cap: float = 10.0, rel_floor: float = 1e-3):
        self.alpha = alpha
        self.cap = cap
        self.rel_floor = rel_floor
        # One 1-D array per statistic: 1-D gathers are several times cheaper than rows.
        self.mean_ = np.zeros(0)
        self.var_ = np.zeros(0)
        self.prev_ = np.zeros(0)
        self.dvar_ = np.zeros(0)  # E[diff^2]
        self.count_ = np.zeros(0, dtype=np.int64)

    def _ensure(self, keys: np.ndarray) -> None:
        size = int(keys.max()) + 1 if len(keys) else 0
        for name in ("mean_", "var_", "prev_", "dvar_", "count_"):
            setattr(self, name, grow(getattr(self, name), size))

    def _gather(self, at: slice | np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(a[at] for a in (self.mean_, self.var_, self.prev_, self.dvar_, self.count_))

    def _raw(self, mean, var, prev, dvar, count, values) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
        floor = 1e-9 + self.rel_floor * np.abs(mean)
        floor *= floor
        z_val = np.abs(values - mean) / np.sqrt(var + floor)
        z_dif = np.abs(values - prev) / np.sqrt(dvar + floor)
        # A series' first samples have no moments yet: report no surprise.
        young = count < 2
        return [
            np.where(young, 0.0, np.minimum(z_val, self.cap)),
            np.where(young, 0.0, np.minimum(z_dif, self.cap)),
        ]

    def raw_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> list[np.ndarray]:
        """Raw signals (two arrays of ``len(keys)``), without learning."""
        self._ensure(keys)
        mean, var, prev, dvar, count = self._gather(rows_of(keys))
        return self._raw(mean, var, prev, dvar, count, values)

    def score_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> np.ndarray:
        z_val, z_dif = self.raw_many(keys, values, ts)
        z = np.maximum(z_val, z_dif)
        return 1.0 - np.exp(-z * z / 8.0)

    def learn_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> None:
        self.raw_learn_many(keys, values, ts)

    def raw_learn_many(
        self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray
    ) -> list[np.ndarray]:
        """``raw_many`` then ``learn_many`` with one state gather."""
        self._ensure(keys)
        at = rows_of(keys)
        # With a slice ``at`` these are views: each is last read before its own write.
        mean, var, prev, dvar, count = self._gather(at)
        raw = self._raw(mean, var, prev, dvar, count, values)
        a = 1.0 / np.minimum(count + 1.0, 1.0 / self.alpha)
        first = count == 0
        mean = np.where(first, values, mean)
        delta = values - mean
        self.mean_[at] = mean + a * delta
        self.var_[at] = (1.0 - a) * (var + a * delta * delta)
        diff = np.where(first, 0.0, values - prev)
        # Differences have mean ~0 for any series worth differencing: track E[d^2] only.
        ad = 1.0 / np.minimum(np.maximum(count, 1.0), 1.0 / self.alpha)
        self.dvar_[at] = np.where(first, 0.0, dvar + ad * (diff * diff - dvar))
        self.prev_[at] = values
        self.count_[at] = count + 1
        return raw
