"""Range break: a value beyond everything the series has shown so far."""

from __future__ import annotations

import numpy as np

from predictor.detectors.base import OnlineDetector, grow, rows_of


class RangeBreak(OnlineDetector):
    """1 when the value leaves the series' observed ``[min, max]`` by more than a margin.

    The margin is ``tolerance`` times the observed range, so ordinary growth of the range
    by small steps is not news, while a jump well past every earlier value is (a rule HTM's
    NAB detector adds on top of its likelihood).

    Parameters
    ----------
    tolerance
        Margin as a fraction of the observed range.
    warmup
        Samples a series must have seen before a break counts (its range forms first).
    """

    n_signals = 1

    def __init__(self, tolerance: float = 0.05, warmup: int = 150):
        self.tolerance = tolerance
        self.warmup = warmup
        self.lo_ = np.zeros(0)
        self.hi_ = np.zeros(0)
        self.count_ = np.zeros(0, dtype=np.int64)

    def _ensure(self, keys: np.ndarray) -> None:
        size = int(keys.max()) + 1 if len(keys) else 0
        self.lo_ = grow(self.lo_, size)
        self.hi_ = grow(self.hi_, size)
        self.count_ = grow(self.count_, size)

    def _raw(self, lo, hi, count, values) -> np.ndarray:  # type: ignore[no-untyped-def]
        margin = self.tolerance * (hi - lo)
        broke = ((values > hi + margin) | (values < lo - margin)) & (hi > lo)
        return (broke & (count >= self.warmup)).astype(float)  # type: ignore[no-any-return]

    def raw_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Raw signal (1 = break), without learning."""
        self._ensure(keys)
        at = rows_of(keys)
        return self._raw(self.lo_[at], self.hi_[at], self.count_[at], values)

    def score_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> np.ndarray:
        return self.raw_many(keys, values, ts)

    def learn_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> None:
        self.raw_learn_many(keys, values, ts)

    def raw_learn_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """``raw_many`` then ``learn_many`` with one state gather."""
        self._ensure(keys)
        at = rows_of(keys)
        lo, hi, count = self.lo_[at], self.hi_[at], self.count_[at]
        raw = self._raw(lo, hi, count, values)
        first = count == 0
        # Each right-hand side is computed before its write lands (``lo`` may be a view).
        self.lo_[at] = np.where(first, values, np.minimum(lo, values))
        self.hi_[at] = np.where(first, values, np.maximum(hi, values))
        self.count_[at] = count + 1
        return raw
