"""Anomaly likelihood: turn a raw novelty signal into a calibrated tail probability.

After HTM's anomaly likelihood (Ahmad et al., 2017): the short-term average of recent
raw scores is compared with the distribution of that average over a long history; the
Gaussian tail probability of the current average is reported on a log scale so that only
the extreme tail (``1 - 1e-5`` and beyond) gets a high score.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_ndtr

from predictor.detectors.base import grow, grow_columns, rows_of

# log(1e-10): a tail probability this small maps to a score of 1.
_LOG_FLOOR = float(np.log(1e-10))


class AnomalyLikelihood:
    """Per-series, per-signal likelihood state for ``n_signals`` raw signals.

    Not a detector itself: detectors feed it a list of ``n_signals`` raw-value arrays
    (one per signal, each of ``len(keys)``) and get scores in ``[0, 1]``.

    Parameters
    ----------
    n_signals
        Number of raw signals tracked per series.
    short
        Effective length (samples) of the short-term average of raw values.
    long
        Effective length (samples) of the long-term mean and variance of that average;
        a running (equal-weight) average until a series has seen ``long`` samples.
    warmup
        Samples a series must have seen before it scores above 0.
    min_std
        Added to the long-term standard deviation, so a signal that has always been
        constant does not turn the first small change into certainty.
    """

    layout = ("n_signals",)

    def __init__(
        self,
        n_signals: int,
        short: float = 10.0,
        long: float = 1000.0,
        warmup: int = 150,
        min_std: float = 0.02,
    ):
        self.n_signals = n_signals
        self.short = short
        self.long = long
        self.warmup = warmup
        self.min_std = min_std
        # (signal, series) arrays: each signal's row is a contiguous 1-D array, and 1-D
        # gathers and scatters are several times cheaper than row gathers.
        self.avg_ = np.zeros((n_signals, 0))
        self.mean_ = np.zeros((n_signals, 0))
        self.var_ = np.zeros((n_signals, 0))
        self.count_ = np.zeros(0, dtype=np.int64)

    def ensure(self, size: int) -> None:
        if self.avg_.shape[1] < size:
            self.avg_ = grow_columns(self.avg_, size)
            self.mean_ = grow_columns(self.mean_, size)
            self.var_ = grow_columns(self.var_, size)
        self.count_ = grow(self.count_, size)

    def _compute(
        self, at: slice | np.ndarray, count: np.ndarray, raw: list[np.ndarray], fuse: bool
    ):  # type: ignore[no-untyped-def]
        a = 1.0 / np.minimum(count + 1.0, self.short)
        old, avg, mean, var, z = [], [], [], [], []
        for j, r in enumerate(raw):
            o, m, v = self.avg_[j][at], self.mean_[j][at], self.var_[j][at]
            x = o + a * (r - o)
            old.append(o)
            avg.append(x)
            mean.append(m)
            var.append(v)
            z.append((x - m) / (np.sqrt(v) + self.min_std))
        if fuse:
            # The score is monotone in z: the max of the scores is the score of the max z,
            # and the tail function (the costly part) runs once per sample.
            zz = z[0]
            for other in z[1:]:
                zz = np.maximum(zz, other)
            z = [zz]
        young = count < self.warmup
        # log Q(z) / log(1e-10): 0.5 at a tail of 1e-5, 1 at 1e-10 and beyond.
        scores = [np.where(young, 0.0, np.clip(log_ndtr(-x) / _LOG_FLOOR, 0.0, 1.0)) for x in z]
        return scores, old, avg, mean, var

    def score(self, keys: np.ndarray, raw: list[np.ndarray], fuse: bool = False):  # type: ignore[no-untyped-def]
        """Log-scaled tail scores in ``[0, 1]`` for raw values, without learning them.

        A list with one array per signal, or (``fuse``) one array: their maximum.
        """
        at = rows_of(keys)
        scores = self._compute(at, self.count_[at], raw, fuse)[0]
        return scores[0] if fuse else scores

    def score_learn(
        self,
        keys: np.ndarray,
        raw: list[np.ndarray],
        mask: np.ndarray | None = None,
        fuse: bool = False,
    ):  # type: ignore[no-untyped-def]
        """``score`` then fold the raw values in, with one state gather (the hot path).

        Rows where ``mask`` is False are not learnt (e.g. while a raw signal settles).
        """
        at = rows_of(keys)
        # With a slice ``at`` the state arrays below are views: each is last read before
        # its own write.
        count = self.count_[at]
        scores, old, avg, mean, var = self._compute(at, count, raw, fuse)
        b = 1.0 / np.minimum(count + 1.0, self.long)
        if mask is not None:
            # Skipped rows keep their state: a zero rate leaves mean and variance as
            # they are (cheaper than scattering a subset).
            b = np.where(mask, b, 0.0)
        for j in range(len(raw)):
            x = avg[j] if mask is None else np.where(mask, avg[j], old[j])
            delta = x - mean[j]
            self.avg_[j][at] = x
            self.mean_[j][at] = mean[j] + b * delta
            self.var_[j][at] = (1.0 - b) * (var[j] + b * delta * delta)
        self.count_[at] = count + (1 if mask is None else mask)
        return scores[0] if fuse else scores

    def learn(
        self, keys: np.ndarray, raw: list[np.ndarray], mask: np.ndarray | None = None
    ) -> None:
        """Fold raw values into the short average and its long-term distribution."""
        self.score_learn(keys, raw, mask)
