"""A fused online detector: cheap novelty signals -> anomaly likelihoods -> max -> quiet."""

from __future__ import annotations

import numpy as np

from predictor.detectors.base import OnlineDetector, grow, row_blocks, rows_of
from predictor.detectors.context_novelty import ContextNovelty
from predictor.detectors.ew_novelty import EwNovelty
from predictor.detectors.likelihood import AnomalyLikelihood
from predictor.detectors.range_break import RangeBreak
from predictor.detectors.seasonal import SeasonalNovelty


class Ensemble(OnlineDetector):
    """Novelty signals calibrated into anomaly likelihoods, fused by max, then kept quiet.

    Raw signals per sample:

    - surprise of the value (:class:`EwNovelty` |z|), replaced by the same |z| against
      the series' daily profile when that is smaller (:class:`SeasonalNovelty`: a daily
      pattern is not an anomaly), then mapped to a bounded, sparse ``[0, 1]`` ramp (0
      below ``ramp[0]`` sigma, 1 beyond ``ramp[1]``), like HTM's raw anomaly, so that the
      likelihood's Gaussian fit is not swamped by heavy tails. When the daily profile is
      the series' model (its residual variance is below ``explained`` times the plain
      model's variance) its |z| is used alone: a day that breaks the pattern with
      ordinary values (a flat or missing peak) is then news;
    - the same ramp of the daily-profile |z| alone, as a signal of its own: on a
      strongly periodic series it is usually near 0, so a departure from the pattern
      stands out, while on an irregular one it is often high and its likelihood stays
      low (the likelihood calibrates it per series, no switch needed);
    - the novelty of the quantised-value context (:class:`ContextNovelty`).

    Each becomes a log-scaled tail probability through :class:`AnomalyLikelihood` (one
    scale, no learned weights) and the maximum is taken; a value far outside everything
    the series has shown (:class:`RangeBreak`) scores 1. Then repeats are suppressed,
    since one event should raise one alarm: within an excursion above ``excursion``
    only a new maximum is reported in full, and after an alarm (score >= ``alarm``) the
    series stays quiet for ``quiet`` samples (repeats are scaled by ``muted``).

    Parameters
    ----------
    short, long, warmup
        Passed to :class:`AnomalyLikelihood`.
    quiet
        Samples of silence after an alarm.
    alarm
        Score that starts a quiet period (0.4 = tail probability 1e-4); kept below the
        scores usually alerted on, so that any alert silences its own repeats.
    alpha
        EW weight of the plain (non-seasonal) value model.
    settle
        Samples a series' raw signals get to settle before they enter the likelihood's
        long-term statistics.
    levels, context
        Passed to :class:`ContextNovelty`.
    tolerance
        Passed to :class:`RangeBreak`.
    ramp
        |z| range mapped linearly onto ``[0, 1]``.
    excursion
        Score below which an excursion ends.
    muted
        Factor applied to repeats (inside an excursion or a quiet period), so they
        stay below alarm levels yet still rank above ordinary samples.
    use_seasonal
        Whether the daily profile may explain away a surprise.
    explained
        Residual-to-plain variance ratio below which the daily profile is the series'
        model (0.5: it explains at least half the variance).

    >>> import numpy as np
    >>> det = Ensemble()
    >>> keys, rng = np.arange(3), np.random.default_rng(0)
    >>> for i in range(400):
    ...     _ = det.score_learn_many(keys, rng.uniform(-1, 1, size=3), np.full(3, 60.0 * i))
    >>> spike = det.score_many(keys, np.array([0.0, 0.0, 25.0]), np.full(3, 60.0 * 400))
    >>> bool(spike[2] > 0.9 and spike[:2].max() < 0.2)
    True
    """

    def __init__(
        self,
        short: float = 10.0,
        long: float = 500.0,
        warmup: int = 150,
        quiet: int = 100,
        alarm: float = 0.4,
        alpha: float = 0.01,
        settle: int = 50,
        levels: int = 16,
        context: int = 3,
        tolerance: float = 0.05,
        ramp: tuple[float, float] = (2.0, 4.0),
        excursion: float = 0.2,
        muted: float = 0.25,
        use_seasonal: bool = True,
        explained: float = 0.5,
    ):
        self.short = short
        self.long = long
        self.warmup = warmup
        self.quiet = quiet
        self.alarm = alarm
        self.alpha = alpha
        self.settle = settle
        self.levels = levels
        self.context = context
        self.tolerance = tolerance
        self.ramp = ramp
        self.excursion = excursion
        self.muted = muted
        self.use_seasonal = use_seasonal
        self.explained = explained
        self.plain_ = EwNovelty(alpha=alpha)
        # Residuals averaged over the plain model's horizon: the two variances compare.
        self.seasonal_ = SeasonalNovelty(err_alpha=alpha)
        self.context_ = ContextNovelty(levels=levels, context=context)
        self.range_ = RangeBreak(tolerance=tolerance, warmup=warmup)
        self.likelihood_ = AnomalyLikelihood(3, short=short, long=long, warmup=warmup)
        self.seen_ = np.zeros(0, dtype=np.int64)  # samples per series
        self.hold_ = np.zeros(0, dtype=np.int64)  # samples left in the quiet period
        self.peak_ = np.zeros(0)  # highest score of the current excursion

    def _ensure(self, keys: np.ndarray) -> None:
        size = int(keys.max()) + 1 if len(keys) else 0
        self.likelihood_.ensure(size)
        # Members grow once for the whole call, not block by block.
        for member in (self.plain_, self.seasonal_, self.context_, self.range_):
            member._ensure(keys)
        self.seen_ = grow(self.seen_, size)
        self.hold_ = grow(self.hold_, size)
        self.peak_ = grow(self.peak_, size)

    def _periodic(self, at: slice | np.ndarray) -> np.ndarray:
        """Series whose daily profile is their model (read before the members learn)."""
        return self.seasonal_.err_[at] < self.explained * self.plain_.var_[at]  # type: ignore[no-any-return]

    def _raw(
        self,
        plain: list[np.ndarray],
        seasonal: list[np.ndarray],
        context: list[np.ndarray],
        periodic: np.ndarray,
    ) -> list[np.ndarray]:
        # Only the value's |z| is used: the change's |z| found few anomalies that the other
        # signals missed and raised many false alarms on bursty series.
        if not self.use_seasonal:
            return [self._ramp(plain[0]), *context, np.zeros(len(plain[0]))]
        # An untrusted phase reports inf: it explains nothing and signals nothing.
        known = np.isfinite(seasonal[0])
        z = np.where(periodic & known, seasonal[0], np.minimum(plain[0], seasonal[0]))
        return [self._ramp(z), *context, self._ramp(np.where(known, seasonal[0], 0.0))]

    def _ramp(self, z: np.ndarray) -> np.ndarray:
        lo, hi = self.ramp
        return np.clip((z - lo) / (hi - lo), 0.0, 1.0)  # type: ignore[no-any-return]

    def _report(self, at: slice | np.ndarray, fused: np.ndarray) -> np.ndarray:
        # Repeats are muted, not zeroed: they still rank above normal samples.
        fresh = (self.hold_[at] == 0) & (fused > self.peak_[at])
        return np.where(fresh, fused, self.muted * fused)

    def score_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> np.ndarray:
        return self._blocks(self._score_block, keys, values, ts)

    def learn_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> None:
        self.score_learn_many(keys, values, ts)

    def score_learn_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> np.ndarray:
        return self._blocks(self._score_learn_block, keys, values, ts)

    def _blocks(self, step, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
        """``step`` block by block: each block's temporaries, in every member, stay in cache."""
        self._ensure(keys)
        out = np.empty(len(keys))
        for part, at in row_blocks(rows_of(keys), len(keys)):
            out[part] = step(keys[part], at, values[part], ts[part])
        return out

    def _score_block(
        self, keys: np.ndarray, at: slice | np.ndarray, values: np.ndarray, ts: np.ndarray
    ) -> np.ndarray:
        raw = self._raw(
            self.plain_.raw_many(keys, values, ts),
            self.seasonal_.raw_many(keys, values, ts),
            self.context_.raw_many(keys, values, ts),
            self._periodic(at),
        )
        fused = np.maximum(
            self.likelihood_.score(keys, raw, fuse=True),
            self.range_.raw_many(keys, values, ts),
        )
        return self._report(at, fused)

    def _score_learn_block(
        self, keys: np.ndarray, at: slice | np.ndarray, values: np.ndarray, ts: np.ndarray
    ) -> np.ndarray:
        periodic = self._periodic(at)
        raw = self._raw(
            self.plain_.raw_learn_many(keys, values, ts),
            self.seasonal_.raw_learn_many(keys, values, ts),
            self.context_.raw_learn_many(keys, values, ts),
            periodic,
        )
        # Raw signals are wild while their own moments form: keep that out of the
        # long-term distribution the likelihood compares against.
        seen = self.seen_[at] + 1
        self.seen_[at] = seen
        fused = np.maximum(
            self.likelihood_.score_learn(keys, raw, seen > self.settle, fuse=True),
            self.range_.raw_learn_many(keys, values, ts),
        )
        out = self._report(at, fused)
        hold, peak = self.hold_[at], self.peak_[at]
        self.peak_[at] = np.where(fused < self.excursion, 0.0, np.maximum(peak, fused))
        self.hold_[at] = np.where(
            (hold == 0) & (fused >= self.alarm), self.quiet, np.maximum(hold - 1, 0)
        )
        return out
