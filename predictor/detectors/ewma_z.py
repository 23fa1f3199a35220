"""Exponentially weighted z-score: the cheapest useful online detector."""

from __future__ import annotations

import numpy as np
from scipy import special

from predictor.detectors.base import OnlineDetector, grow, rows_of


class EwmaZScore(OnlineDetector):
    """Surprise of the sample against the series' EW mean and variance.

    The score is ``-log10(p) / 10`` (capped at 1) for the two-sided Gaussian tail
    probability ``p`` of the sample's z-score: z = 3 scores about 0.26, z = 6.5 scores 1.
    The log scale keeps ordinary noise near 0 even across thousands of series.

    Parameters
    ----------
    alpha
        Weight of each new sample in the running mean and variance.
    warmup
        Samples a series must have seen before it scores above 0.
    """

    def __init__(self, alpha: float = 0.02, warmup: int = 10):
        self.alpha = alpha
        self.warmup = warmup
        self.count_ = np.zeros(0, dtype=np.int64)
        self.mean_ = np.zeros(0)
        self.var_ = np.zeros(0)

    def _ensure(self, keys: np.ndarray) -> None:
        size = int(keys.max()) + 1 if len(keys) else 0
        self.count_ = grow(self.count_, size)
        self.mean_ = grow(self.mean_, size)
        self.var_ = grow(self.var_, size)

    def score_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> np.ndarray:
        self._ensure(keys)
        return self._score(rows_of(keys), values)

    def learn_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> None:
        self._ensure(keys)
        self._learn(rows_of(keys), values)

    def score_learn_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> np.ndarray:
        self._ensure(keys)
        at = rows_of(keys)
        scores = self._score(at, values)
        self._learn(at, values)
        return scores

    def _score(self, at: slice | np.ndarray, values: np.ndarray) -> np.ndarray:
        count, mean = self.count_[at], self.mean_[at]
        # The floor keeps a perfectly flat series from turning any change into z = inf.
        scale = np.sqrt(self.var_[at])
        scale += 1e-9
        scale += 1e-3 * np.abs(mean)
        z = values - mean
        np.abs(z, out=z)
        z /= scale
        # log10 of the two-sided tail probability 2 * sf(z), computed stably for large z.
        log10_p = special.log_ndtr(np.negative(z, out=z), out=z)
        log10_p += np.log(2.0)
        log10_p /= np.log(10.0)
        scores = np.negative(log10_p, out=log10_p)
        scores /= 10.0
        np.clip(scores, 0.0, 1.0, out=scores)
        np.copyto(scores, 0.0, where=count < self.warmup)
        return scores  # type: ignore[no-any-return]

    def _learn(self, at: slice | np.ndarray, values: np.ndarray) -> None:
        first = self.count_[at] == 0
        mean = np.where(first, values, self.mean_[at])
        var = np.where(first, 0.0, self.var_[at])
        delta = values - mean
        a = self.alpha
        self.mean_[at] = mean + a * delta
        self.var_[at] = (1 - a) * (var + a * delta * delta)
        self.count_[at] += 1
