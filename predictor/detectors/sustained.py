"""Sustained evidence: a trend that keeps going, or samples that keep going missing."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from predictor.detectors.base import OnlineDetector, grow_columns, row_blocks, rows_of

# Per-series state, one row per quantity (columnar: a fleet's column is contiguous).
(_N, _T, _X, _G, _MU, _DEV, _ABS, _UP, _DOWN, _GAP, _MISS, _NOISE, _SINCE, _FLOOR, _HELD, _CAP,
 _GZ) = range(17)  # fmt: skip
_STATE = 17
# Mean |diff| of white noise is 2/sqrt(pi) sigma; sigma of an EW mean of diffs ~ alpha sigma.
_DIFF_TO_SLOPE_SIGMA = np.sqrt(np.pi) / 2
_TABLE_MAX = 1 << 20  # longest table of bias-correction weights kept
_HELD_FADE = 0.7
STEP_NOISE = 4.0
HELD_SHARE = 0.5


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
      rate, so a ramp the series always shows (rotation) or a slow wave scores low; the
      same slope with each move read against the floor of its own time bounds it, so the
      last steps of a noisy stretch (a batch job winding down) do not count again as the
      floor falls back to the quiet noise;
    - the standardised slope, clipped to ``clip``, feeds a two-sided CUSUM with allowance
      ``k``: evidence accumulates only while the unusual slope persists;
    - samples missed since the previous one (the gap over the series' typical gap, clipped
      to ``gap_clip``) feed a second CUSUM with allowance ``gap_k``: one late scrape adds
      little, a node dropping more and more samples adds up. A silence (``reset_gaps``: an
      outage, a reboot) restarts both CUSUMs, and a share of its own missed samples is
      held back (``held_share``): fading by ``held_fade`` with each sample on time, it
      counts only if another scrape goes missing. A node back from its failure is not
      kept at risk by the gap it left; one whose scrapes keep failing is.

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
        Samples before a series may score, at its start and again after a silence: a
        node back from a reboot refills its memory and caches, a ramp it shows every time.
    rate_clip
        Rates are clipped to this many times the series' typical absolute rate: the
        long-run one, or the recent size of clipped moves when larger. A jump raises the
        recent noise (and the floor) at its full size but the clip only by its clipped
        size, so the way back down from a deploy's blip is clipped nearly like the way up
        (clipped against the noise the jump up made, it counted for about three times as
        much, and with a batch job ending soon after, read as a fall). A clean fast ramp
        opens the clip within a few samples (by up to 45% a sample).
    reset_gaps
        A gap of more than this many typical gaps (a silence) restarts the trend evidence.
    alpha_noise
        EW weight of the recent size of moves (a step up to ``step_noise`` clips). The floor
        rises with it at once but falls only as fast as the slope ``g`` forgets
        (``alpha``): after a noisy stretch ends with a step (a batch job stops), the step
        must fade from ``g`` first.
    freeze
        Above this fraction of ``h`` the slope reference learns ten times slower. At 0.4,
        a leak climbing over a garbage-collection sawtooth at about twice its slope built
        evidence to 0.23 of ``h`` while the reference learnt the leak's slope, and the
        evidence then faded: a 170 min leak pinned memory at 100% undrained (one of four
        fresh 500 node-day fleets). At 0.2 it drained 61 min ahead, 15 failures on those
        fleets drained 1-2 min earlier, none later, and no healthy node either way; of
        200 synthetic leaks over such sawtooths 1 more was caught, 38 earlier, none later.
    held_fade
        Share of a silence's held-back missed samples kept per sample that arrives on time.
    held_share
        Share of a silence's missed samples (clipped to ``gap_clip``) held back. In full,
        a node back from a ten-minute crash whose one series then missed two scrapes in
        a row reached 0.82 of ``gap_h``, over the policy's 0.8 (a fresh fleet's healthy
        node drained). At half, a silence and any one gap after it stay under 0.8 (at
        most 4.5 of 6 missed samples); a node that keeps losing samples still adds up,
        but a little later: of 300 synthetic patchy series (dropping up to 70-95% of
        scrapes before dying) 266 reached 0.8 before dying at half, 272 in full, as a
        silence clears the evidence built before it and less is held back in its place.
        Holding that cleared evidence back too was tried and dropped: on a long fleet two
        nodes drained for patchy data, back from their failures, each missed one scrape
        minutes later and got all of it back (far past ``gap_h``, fading by ``gap_k`` a
        sample): their risk stayed over the exit threshold for 50 and 109 min after they
        were back, so they stayed drained, and the budget held back one's pool-mate with
        a filling disk (drained 11 min ahead otherwise).
    step_noise
        A move counts in the recent noise up to this many times the rate clip (None: at
        full size). The slope keeps no more of a step than the clip, so the floor need not
        grow with the step beyond it; at full size a daily log rotation (a drop of 300
        typical moves) kept a disk's floor up for over an hour, and a disk filling from
        a quarter of an hour after it built no evidence for 30 minutes. On four fresh
        fleets (1,096 node-days) 4 drained 12 failures earlier (132 min in all; that disk
        24), none later; on four further, not used to choose it, 8 earlier (21 min), and
        on four long ones (2,000 node-days) 17 earlier (89 min), none later. The same
        healthy nodes drained either way (one on each of two fleets). At 2 a
        deploy blip read as a fall and a noisy plateau winding down alarmed.
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
        freeze: float = 0.2,
        held_fade: float = _HELD_FADE,
        step_noise: float | None = STEP_NOISE,
        held_share: float = HELD_SHARE,
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
        self.held_fade = held_fade
        self.step_noise = step_noise
        self.held_share = held_share
        self.columns_ = np.zeros((_STATE, 0))

    def _ensure(self, keys: np.ndarray) -> None:
        self.columns_ = grow_columns(self.columns_, int(keys.max()) + 1 if len(keys) else 0)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Checkpoints from before the columnar layout kept one row per series.
        if "state_" in state:
            state["columns_"] = np.ascontiguousarray(state.pop("state_").T)
        columns = state["columns_"]
        if len(columns) == _SINCE:  # before restarts were counted: none since the start
            columns = np.vstack([columns, columns[_N]])
        if len(columns) == _FLOOR:  # before the slow-falling floor: it starts at the noise
            columns = np.vstack([columns, columns[_NOISE]])
        if len(columns) == _HELD:  # before silences were held back: none held
            columns = np.vstack([columns, np.zeros(columns.shape[1])])
        if len(columns) == _CAP:  # before the clip learnt clipped moves: the recent ones
            columns = np.vstack([columns, columns[_NOISE]])
        if len(columns) == _GZ:  # before moves were standardised as they came: as now
            moves = np.maximum(columns[_ABS], columns[_FLOOR]) * _DIFF_TO_SLOPE_SIGMA
            slope_z = (columns[_G] - columns[_MU]) / (state["alpha"] * moves + 1e-12)
            columns = np.vstack([columns, np.clip(slope_z, -state["clip"], state["clip"])])
        state.setdefault("held_fade", _HELD_FADE)
        state.setdefault("held_share", HELD_SHARE)
        state.setdefault("step_noise", STEP_NOISE)
        state["columns_"] = columns
        self.__dict__.update(state)

    def _step(self, s: np.ndarray, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The score of each sample; ``s`` (state columns of the samples' series) learns it.

        Written with in-place operations on whole columns: ``s`` is a view of the state
        when the keys are one ascending run, so nothing is gathered or scattered.
        """
        n = s[_N]
        first = n == 0
        any_first = bool(first.any())
        dt = t - s[_T]
        if any_first:
            dt[first] = 1.0
        np.copyto(dt, 1.0, where=dt <= 0)  # a gap that is not positive counts as 1 s
        # Bias-corrected slow moments: unbiased from the first samples on.
        count = n.astype(np.intp)
        weight_prev = _bias_weight(self.alpha_ref, count, lowest=0, shift=-1)
        mu_prev = _unbias(s[_MU], weight_prev)
        dev_prev = _unbias(s[_DEV], weight_prev)
        abs_prev = _unbias(s[_ABS], weight_prev)
        typical = _unbias(s[_GAP], weight_prev)
        # After a silence (an outage, a reboot) the series starts a new trend from scratch.
        settled = n > 2
        silent = dt > typical * self.reset_gaps
        silent &= settled
        restart = first | silent
        any_restart = bool(restart.any())
        # The noise may grow with the level (latency under load): clip and floor follow
        # the larger of the long-run and the recent size of moves (clipped, for the clip).
        moves_now = np.maximum(abs_prev, s[_FLOOR])
        # Winsorised rate: a step counts like one large move, a ramp keeps counting. The
        # clip must stay wide of the noise: clipping most moves of a noisy stretch breaks
        # the cancelling of consecutive ones, and the slope then wanders like a random walk
        # several times wider than the floor below assumes.
        rate = x - s[_X]
        rate /= dt
        if any_restart:
            rate[restart] = 0.0
        moves_raw = np.abs(rate)
        cap = np.where(settled, np.maximum(abs_prev, s[_CAP]), moves_raw)
        cap *= self.rate_clip
        np.clip(rate, -cap, cap, out=rate)
        g = rate - s[_G]
        g *= self.alpha
        g += s[_G]
        if any_restart:
            g[silent] = 0.0
        # Per-move standardisation by the noise floor of the move's own time, besides
        # the slope against today's floor: a step down at the end of a noisy stretch (a
        # batch job's plateau ending) stays in g while the floor falls back to the quiet
        # noise, and read against today's floor alone it counts again every sample until
        # the floor has settled.
        floor_scale = moves_now
        floor_scale *= self.alpha * _DIFF_TO_SLOPE_SIGMA
        floor_scale += 1e-12
        gz = rate - mu_prev
        gz /= floor_scale
        gz -= s[_GZ]
        gz *= self.alpha
        gz += s[_GZ]
        scale = np.maximum(dev_prev * 1.2533, floor_scale)
        z = g - mu_prev
        z /= scale
        since = s[_SINCE]
        if any_restart:
            since[restart] = 0.0
        idle = since < self.warmup
        # Clipped like z, and nothing while warming up (no floor yet): a tiny early floor
        # must not leave a huge reading to fade for hours.
        np.clip(gz, -self.clip, self.clip, out=gz)
        np.copyto(gz, 0.0, where=idle)
        # The weaker of the two readings: z between 0 and gz (so within the clip too).
        np.clip(z, np.minimum(gz, 0.0), np.maximum(gz, 0.0), out=z)
        up = s[_UP] + z
        up -= self.k
        np.maximum(up, 0.0, out=up)
        down = s[_DOWN] - z
        down -= self.k
        np.maximum(down, 0.0, out=down)
        np.copyto(up, 0.0, where=idle)
        np.copyto(down, 0.0, where=idle)
        no_gap = n < 2
        missed = np.maximum(typical, 1e-9)
        np.divide(dt, missed, out=missed)
        missed -= 1.0
        np.clip(missed, 0, None, out=missed)
        np.copyto(missed, 0.0, where=no_gap)
        np.minimum(missed, self.gap_clip, out=missed)
        miss = s[_MISS].copy()
        # A dropped scrape after a silence: the node is still losing samples, and what
        # the silence held back counts after all. Samples on time let it fade.
        late = missed >= 0.5
        np.add(miss, s[_HELD], out=miss, where=late)
        held = s[_HELD] * self.held_fade
        np.copyto(held, 0.0, where=late)
        if any_restart:
            miss[silent] = 0.0
            held[silent] = missed[silent] * self.held_share
            missed[silent] = 0.0
        miss += missed
        miss -= self.gap_k
        np.maximum(miss, 0.0, out=miss)
        np.copyto(miss, 0.0, where=n <= self.warmup)
        gap_in = typical * 2
        np.copyto(gap_in, dt * 2, where=~settled)
        np.minimum(dt, gap_in, out=gap_in)
        np.copyto(gap_in, 0.0, where=no_gap)
        # Every read of the previous state is done: from here on the columns learn.
        s[_T] = t
        s[_X] = x
        s[_G] = g
        s[_GZ] = gz
        # While evidence builds up the reference barely learns: a trend that keeps going
        # must not become the series' normal before it has been reported.
        a = self.alpha_ref
        peak = np.maximum(up, down)
        a_ref = np.where(peak > self.freeze * self.h, 0.1 * a, a)
        raw_mu = g - s[_MU]
        raw_mu *= a_ref
        raw_mu += s[_MU]
        if any_first:
            raw_mu[first] = 0.0
        s[_MU] = raw_mu
        weight = _bias_weight(a, count, lowest=1, shift=0)
        dev = g - _unbias(raw_mu, weight)
        np.abs(dev, out=dev)
        dev -= s[_DEV]
        dev *= a_ref
        dev += s[_DEV]
        if any_first:
            dev[first] = 0.0
        s[_DEV] = dev
        restarted = restart if any_restart else None
        clipped_moves = np.abs(rate)
        _ew_update(s[_ABS], clipped_moves, a, keep=restarted)
        # The recent noise takes a step far beyond the clip: clipped in the slope, it would
        # leave the floor low while the slope still remembers it, and a deploy's short
        # plateau (a jump up held back by the clip, the noisier way back counted in full)
        # would read as a fall for as long as both take to forget it. But not at any size:
        # the slope keeps no more of it than the clip.
        if self.step_noise is not None:
            np.minimum(moves_raw, cap * self.step_noise, out=moves_raw)
        _ew_update(s[_NOISE], moves_raw, self.alpha_noise, keep=restarted)
        _ew_update(s[_CAP], clipped_moves, self.alpha_noise, keep=restarted)
        _ew_update(s[_FLOOR], s[_NOISE], self.alpha)
        np.maximum(s[_FLOOR], s[_NOISE], out=s[_FLOOR])
        # The gap moments start at the second sample; count them from there.
        _ew_update(s[_GAP], gap_in, a, keep=no_gap)
        s[_UP] = up
        s[_DOWN] = down
        s[_MISS] = miss
        s[_HELD] = held
        n += 1
        since += 1
        score = np.divide(peak, self.h, out=peak)
        np.maximum(score, miss / self.gap_h, out=score)
        return np.clip(score, 0.0, 1.0, out=score)

    def _steps(self, s: np.ndarray, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        """``_step`` block by block: a block's temporaries stay in cache."""
        score = np.empty(len(x))
        for part, _ in row_blocks(slice(0, len(x)), len(x)):
            score[part] = self._step(s[:, part], x[part], t[part])
        return score

    def score_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> np.ndarray:
        self._ensure(keys)
        return self._steps(self.columns_[:, keys], values, ts)

    def learn_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> None:
        self.score_learn_many(keys, values, ts)

    def score_learn_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> np.ndarray:
        self._ensure(keys)
        at = rows_of(keys)
        s = self.columns_[:, at]  # a view for a run of keys: learns in place
        score = self._steps(s, values, ts)
        if not isinstance(at, slice):
            self.columns_[:, at] = s
        return score


def _ew_update(
    column: np.ndarray, x: np.ndarray, alpha: float, keep: np.ndarray | None = None
) -> None:
    """``column += alpha * (x - column)`` in place, except where ``keep`` is True."""
    step = x - column
    step *= alpha
    step += column
    np.copyto(column, step, where=True if keep is None else ~keep)


@functools.lru_cache(maxsize=16)
def _bias_table(a: float) -> np.ndarray | None:
    """``max(1 - (1 - a) ** k, 1e-12)`` for ``k = 0, 1, ...`` until it is exactly 1.

    A lookup is many times cheaper than ``**`` per sample and gives the same bits (the
    same ufunc on the same numbers). None when the table would be too long (tiny ``a``).
    """
    if not 0.0 < a < 1.0:
        return None
    # (1 - a) ** k <= 2 ** -54 makes 1 - (1 - a) ** k round to exactly 1.
    length = int(np.ceil(-54 * np.log(2) / np.log1p(-a))) + 2
    if length > _TABLE_MAX:
        return None
    table = np.maximum(1.0 - (1.0 - a) ** np.arange(length, dtype=np.float64), 1e-12)
    return table if table[-1] == 1.0 else None


def _bias_weight(a: float, count: np.ndarray, *, lowest: int, shift: int) -> np.ndarray | None:
    """``max(1 - (1 - a) ** max(count + shift, lowest), 1e-12)``; None where all are 1."""
    table = _bias_table(a)
    if table is None:
        exponent = np.maximum(count + shift, lowest).astype(np.float64)
        return np.maximum(1.0 - (1.0 - a) ** exponent, 1e-12)  # type: ignore[no-any-return]
    if not len(count) or int(count.min()) + shift >= len(table) - 1:  # all long-lived
        return None
    index = count + shift
    np.clip(index, lowest, len(table) - 1, out=index)
    return table[index]  # type: ignore[no-any-return]


def _unbias(column: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
    return column if weight is None else column / weight
