"""Sustained evidence: a trend that keeps going, or samples that keep going missing."""

from __future__ import annotations

import numpy as np

from predictor.detectors.base import OnlineDetector, grow

# Per-series state columns.
_N, _T, _X, _G, _MU, _DEV, _ABS, _UP, _DOWN, _GAP, _MISS, _NOISE = range(12)
_STATE = 12
# Mean |diff| of white noise is 2/sqrt(pi) sigma; sigma of an EW mean of diffs ~ alpha sigma.
_DIFF_TO_SLOPE_SIGMA = np.sqrt(np.pi) / 2


class Sustained(OnlineDetector):
    """CUSUM evidence of a trend the series has not shown before, and of growing gaps.

    Precursors of failures ramp for tens of minutes (a leak, a filling disk, creeping
    latency), while the healthy behaviour that fools rules is a step that then sits still
    (a batch job, a deploy), a spike, a slow daily wave or a ramp the series repeats (log
    rotation, garbage collection). Per series, on each sample:

    - the *slope* ``g`` is an exponentially weighted mean (``alpha``) of the rate of change;
      a step or a spike moves it for a few samples only;
    - it is standardised against the series' own slope history (slow EW mean and mean
      absolute deviation, ``alpha_ref``, bias-corrected), with a floor from the noise of the
      rate, so a ramp the series always shows (rotation) or a slow wave scores low;
    - the standardised slope, clipped to ``clip``, feeds a two-sided CUSUM with allowance
      ``k``: evidence accumulates only while the unusual slope persists;
    - samples missed since the previous one (the gap over the series' typical gap, clipped
      to ``gap_clip``) feed a second CUSUM with allowance ``gap_k``: one late scrape or a
      short reboot adds little, a node dropping more and more samples adds up.

    The score is the larger CUSUM over its threshold (``h`` or ``gap_h``), clipped to 1.
    Nothing here depends on what the metric is, only on the series' own history.

    Parameters
    ----------
    alpha
        EW weight of the slope (about 2 / (window + 1) samples).
    alpha_ref
        EW weight of the slope's reference mean and deviation (hours of samples).
    k, clip, h
        CUSUM allowance, per-sample clip and threshold of the trend evidence, in
        standardised-slope units.
    gap_k, gap_clip, gap_h
        The same for missed samples.
    warmup
        Samples before a series may score.
    rate_clip
        Rates are clipped to this many times the series' typical absolute rate.
    reset_gaps
        A gap of more than this many typical gaps (a silence) restarts the trend evidence.
    alpha_noise
        EW weight of the recent size of moves (the noise floor follows it when it grows).
    freeze
        Above this fraction of ``h`` the slope reference learns ten times slower.
    """

    def __init__(
        self,
        alpha: float = 0.05,
        alpha_ref: float = 0.003,
        k: float = 2.0,
        clip: float = 6.0,
        h: float = 75.0,
        gap_k: float = 0.05,
        gap_clip: float = 3.0,
        gap_h: float = 6.0,
        warmup: int = 30,
        rate_clip: float = 4.0,
        reset_gaps: float = 5.0,
        alpha_noise: float = 0.15,
        freeze: float = 0.4,
    ):
        self.alpha = alpha
        self.alpha_ref = alpha_ref
        self.k = k
        self.clip = clip
        self.h = h
        self.gap_k = gap_k
        self.gap_clip = gap_clip
        self.gap_h = gap_h
        self.warmup = warmup
        self.rate_clip = rate_clip
        self.reset_gaps = reset_gaps
        self.alpha_noise = alpha_noise
        self.freeze = freeze
        self.state_ = np.zeros((0, _STATE))

    def _ensure(self, keys: np.ndarray) -> None:
        self.state_ = grow(self.state_, int(keys.max()) + 1 if len(keys) else 0)

    def _step(self, s: np.ndarray, x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The score of each sample and the state after it (``s`` is not modified)."""
        n = s[:, _N]
        first = n == 0
        dt = np.where(first, 1.0, t - s[:, _T])
        dt = np.where(dt > 0, dt, 1.0)
        # Bias-corrected slow moments: unbiased from the first samples on.
        a = self.alpha_ref
        weight_prev = 1.0 - (1.0 - a) ** np.maximum(n - 1, 0)
        weight = 1.0 - (1.0 - a) ** np.maximum(n, 1)
        mu_prev = s[:, _MU] / np.maximum(weight_prev, 1e-12)
        dev_prev = s[:, _DEV] / np.maximum(weight_prev, 1e-12)
        abs_prev = s[:, _ABS] / np.maximum(weight_prev, 1e-12)
        typical = s[:, _GAP] / np.maximum(weight_prev, 1e-12)
        # After a silence (an outage, a reboot) the series starts a new trend from scratch.
        silent = (n > 2) & (dt > self.reset_gaps * typical)
        # Winsorised rate: a step counts like one large move, a ramp keeps counting.
        raw_rate = np.where(first | silent, 0.0, (x - s[:, _X]) / dt)
        cap = self.rate_clip * np.where(n > 2, abs_prev, np.abs(raw_rate))
        rate = np.clip(raw_rate, -cap, cap)
        g = np.where(silent, 0.0, s[:, _G] + self.alpha * (rate - s[:, _G]))
        # The noise may grow with the level (latency under load): the floor follows the
        # larger of the long-run and the recent size of moves.
        noise_prev = np.maximum(abs_prev, s[:, _NOISE])
        floor = self.alpha * _DIFF_TO_SLOPE_SIGMA * noise_prev
        scale = np.maximum(1.2533 * dev_prev, floor) + 1e-12
        z = np.clip((g - mu_prev) / scale, -self.clip, self.clip)
        ready = n >= self.warmup
        ready = ready & ~silent
        up = np.where(ready, np.maximum(s[:, _UP] + z - self.k, 0.0), 0.0)
        down = np.where(ready, np.maximum(s[:, _DOWN] - z - self.k, 0.0), 0.0)
        has_gap = n >= 2
        missed = np.where(has_gap, np.clip(dt / np.maximum(typical, 1e-9) - 1.0, 0, None), 0.0)
        miss = np.where(
            n > self.warmup,
            np.maximum(
                np.where(silent, 0.0, s[:, _MISS]) + np.minimum(missed, self.gap_clip) - self.gap_k,
                0.0,
            ),
            0.0,
        )
        gap_in = np.where(has_gap, np.minimum(dt, 2 * np.where(n > 2, typical, dt)), 0.0)
        out = s.copy()
        out[:, _N] = n + 1
        out[:, _T] = t
        out[:, _X] = x
        out[:, _G] = g
        # While evidence builds up the reference barely learns: a trend that keeps going
        # must not become the series' normal before it has been reported.
        a_ref = np.where(np.maximum(up, down) > self.freeze * self.h, 0.1 * a, a)
        raw_mu = np.where(first, 0.0, s[:, _MU] + a_ref * (g - s[:, _MU]))
        out[:, _MU] = raw_mu
        mu_now = raw_mu / np.maximum(weight, 1e-12)
        out[:, _DEV] = np.where(first, 0.0, s[:, _DEV] + a_ref * (np.abs(g - mu_now) - s[:, _DEV]))
        out[:, _ABS] = np.where(
            first | silent, s[:, _ABS], s[:, _ABS] + a * (np.abs(rate) - s[:, _ABS])
        )
        out[:, _NOISE] = np.where(
            first | silent,
            s[:, _NOISE],
            s[:, _NOISE] + self.alpha_noise * (np.abs(rate) - s[:, _NOISE]),
        )
        # The gap moments start at the second sample; count them from there.
        out[:, _GAP] = np.where(has_gap, s[:, _GAP] + a * (gap_in - s[:, _GAP]), s[:, _GAP])
        out[:, _UP] = up
        out[:, _DOWN] = down
        out[:, _MISS] = miss
        score = np.maximum(np.maximum(up, down) / self.h, miss / self.gap_h)
        return np.clip(score, 0.0, 1.0), out

    def score_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> np.ndarray:
        self._ensure(keys)
        return self._step(self.state_[keys], values, ts)[0]

    def learn_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> None:
        self.score_learn_many(keys, values, ts)

    def score_learn_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> np.ndarray:
        self._ensure(keys)
        score, self.state_[keys] = self._step(self.state_[keys], values, ts)
        return score
