"""Daily-profile surprise: the value and its change against the same time of day."""

from __future__ import annotations

from typing import Any

import numpy as np

from predictor.detectors.base import OnlineDetector, grow, grow_columns, rows_of

_LEGACY_TABLES = ("vmean_", "vvar_", "dmean_", "dvar_")


class SeasonalNovelty(OnlineDetector):
    """|z| of the value and of its change against a per-phase EW profile.

    The period (default one day) is cut into ``buckets`` phases by the sample's own
    timestamp; each phase keeps an EW mean and variance of the value and of its first
    difference (float32, ``4 * buckets`` numbers per series). A phase seen fewer than
    ``min_seen`` times reports ``inf`` (it explains nothing yet), so the ensemble's
    ``min`` with a non-seasonal model falls back to that model.

    ``err_`` keeps, per series, an EW mean of the squared residual of the value against
    its trusted phase means (``inf`` before the first): a detector compares it with a
    non-seasonal model's variance to tell whether the daily profile is the better model.

    Parameters
    ----------
    period
        Seasonal period in seconds.
    buckets
        Phases per period.
    alpha
        Weight of each new sample in its phase's mean and variance.
    min_seen
        Visits a phase needs before it is trusted.
    rel_floor, cap
        As in :class:`~predictor.detectors.ew_novelty.EwNovelty`.
    err_alpha
        Weight of each new residual in ``err_``.
    """

    n_signals = 2
    layout = ("period", "buckets")  # which phase of the day each profile row is

    def __init__(
        self,
        period: float = 86400.0,
        buckets: int = 48,
        alpha: float = 0.1,
        min_seen: int = 3,
        rel_floor: float = 1e-3,
        cap: float = 10.0,
        err_alpha: float = 0.01,
    ):
        self.period = period
        self.buckets = buckets
        self.alpha = alpha
        self.min_seen = min_seen
        self.rel_floor = rel_floor
        self.cap = cap
        self.err_alpha = err_alpha
        # Phase-major tables: (statistic, phase, series) value mean and variance, change
        # mean and variance; (phase, series) visits. A fleet's samples at one time of day
        # then sit side by side, so gathering and scattering them reads few cache lines.
        self.profile_ = np.zeros((4, buckets, 0), dtype=np.float32)
        self.visits_ = np.zeros((buckets, 0), dtype=np.int32)
        self.prev_ = np.zeros(0)
        self.count_ = np.zeros(0, dtype=np.int64)
        self.err_ = np.zeros(0)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Checkpoints from before the phase-major layout kept (series, phase) tables.
        if "vmean_" in state:
            tables = [state.pop(name).T for name in _LEGACY_TABLES]
            state["profile_"] = np.ascontiguousarray(np.stack(tables))
            state["visits_"] = np.ascontiguousarray(state.pop("seen_").T)
        # Checkpoints from before the residual was tracked: no residual seen yet.
        state.setdefault("err_", np.full(len(state["count_"]), np.inf))
        state.setdefault("err_alpha", 0.01)
        self.__dict__.update(state)

    def _ensure(self, keys: np.ndarray) -> None:
        size = int(keys.max()) + 1 if len(keys) else 0
        if self.visits_.shape[1] < size:
            stats, phases, series = self.profile_.shape
            flat = grow_columns(self.profile_.reshape(stats * phases, series), size)
            self.profile_ = flat.reshape(stats, phases, flat.shape[1])
            self.visits_ = grow_columns(self.visits_, size)
        self.prev_ = grow(self.prev_, size)
        self.count_ = grow(self.count_, size)
        self.err_ = grow(self.err_, size, np.inf)

    def _cell(self, keys: np.ndarray, ts: np.ndarray) -> np.ndarray:
        phase = (np.floor((ts % self.period) / self.period * self.buckets)).astype(np.int64)
        np.minimum(phase, self.buckets - 1, out=phase)
        phase *= self.visits_.shape[1]
        phase += keys
        return phase  # type: ignore[no-any-return]

    def _gather(self, cell: np.ndarray) -> list[np.ndarray]:
        # Flat 1-D fancy indexing: several times cheaper than (phase, key) pairs.
        vmean, vvar, dmean, dvar = self._profile()[:, cell].astype(float)
        return [vmean, vvar, dmean, dvar, self.visits_.reshape(-1)[cell]]

    def _profile(self) -> np.ndarray:
        """The profile as (statistic, cell): a view, so writes land in the tables."""
        stats, phases, series = self.profile_.shape
        return self.profile_.reshape(stats, phases * series)

    def _raw(self, vmean, vvar, dmean, dvar, seen, values, diff) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
        floor = 1e-9 + self.rel_floor * np.abs(vmean)
        floor *= floor
        z_val = np.minimum(np.abs(values - vmean) / np.sqrt(vvar + floor), self.cap)
        z_dif = np.minimum(np.abs(diff - dmean) / np.sqrt(dvar + floor), self.cap)
        young = seen < self.min_seen
        return [np.where(young, np.inf, z_val), np.where(young, np.inf, z_dif)]

    def raw_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> list[np.ndarray]:
        """Raw signals (two arrays of ``len(keys)``), without learning."""
        self._ensure(keys)
        diff = values - self.prev_[rows_of(keys)]
        vmean, vvar, dmean, dvar, seen = self._gather(self._cell(keys, ts))
        return self._raw(vmean, vvar, dmean, dvar, seen, values, diff)

    def score_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> np.ndarray:
        z_val, z_dif = self.raw_many(keys, values, ts)
        z = np.maximum(z_val, z_dif)
        return np.where(np.isfinite(z), 1.0 - np.exp(-z * z / 8.0), 0.0)

    def learn_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> None:
        self.raw_learn_many(keys, values, ts)

    def raw_learn_many(
        self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray
    ) -> list[np.ndarray]:
        """``raw_many`` then ``learn_many`` with one state gather."""
        self._ensure(keys)
        cell = self._cell(keys, ts)
        vmean, vvar, dmean, dvar, seen = self._gather(cell)
        at = rows_of(keys)
        count = self.count_[at]
        change = values - self.prev_[at]
        diff = np.where(count == 0, 0.0, change)
        raw = self._raw(vmean, vvar, dmean, dvar, seen, values, change)
        a = 1.0 / np.minimum(seen + 1.0, 1.0 / self.alpha)
        learnt = np.empty((4, len(keys)))
        for row, x, mean, var in ((0, values, vmean, vvar), (2, diff, dmean, dvar)):
            delta = x - mean
            learnt[row] = mean + a * delta
            learnt[row + 1] = (1.0 - a) * (var + a * delta * delta)
        self._profile()[:, cell] = learnt
        # Residuals against untrusted phases say nothing about the profile; the first
        # trusted one starts the average.
        err = self.err_[at]
        sq = values - vmean
        sq *= sq
        prior = np.where(np.isfinite(err), err, sq)
        self.err_[at] = np.where(seen >= self.min_seen, prior + self.err_alpha * (sq - prior), err)
        self.visits_.reshape(-1)[cell] = seen + 1
        self.prev_[at] = values
        self.count_[at] = count + 1
        return raw
