"""Breakout: sustained trend evidence that counts for more once the level leaves its range."""

from __future__ import annotations

from typing import Any

import numpy as np

from predictor.detectors.base import OnlineDetector, grow, rows_of
from predictor.detectors.sustained import (
    _ABS,
    _DOWN,
    _FLOOR,
    _GAP,
    _SINCE,
    _UP,
    Sustained,
    _bias_weight,
    _unbias,
)

# Per-series state columns of the envelope.
_N, _LO, _HI, _LO_AGE, _HI_AGE = range(5)
_STATE = 5
HELD_FOR = 3
NOISE_MARGIN = 2.0
# The inner trend evidence may grow faster than Sustained's default: a clean ramp gives
# z-scores far above 6, and the breakout gate, not the clip, keeps sawtooths out.
INNER_DEFAULTS: dict[str, Any] = {"clip": 12.0}


class Breakout(OnlineDetector):
    """:class:`Sustained` evidence, with a lower threshold while the level breaks its range.

    The trend CUSUM must be high on its own (``h``) because healthy series repeat ramps
    of their own: a sawtooth of garbage collection or log rotation climbs for hours. Such
    a ramp stays inside the range the series has already shown, while a precursor (a
    leak, a filling disk, a heating core) drives the level past everything seen before.
    So per series this keeps an envelope ``[lo, hi]`` of the levels of the last hours and,
    while the value lies beyond it by more than ``margin`` of its width, or by more than
    ``noise_margin`` of the series' typical moves (or the level held over the last
    samples by ``held_noise_margin`` of its long-run moves), the trend evidence is read
    against ``fraction * h``: the same evidence, reported earlier.

    A step (a batch job, a deploy) breaks the range too, but adds little trend evidence
    (the trend CUSUM winsorises rates), so the lower threshold still needs a ramp. The
    envelope spans the levels the series has *held* (for ``held_for`` samples in a row), so
    a short excursion (a deploy blip, a spike) does not widen it for the hours it takes to
    fade, and stops learning while the trend evidence builds up, so a ramp cannot drag the
    range along and hide its own breakout. Only the series' own history is used.

    Parameters
    ----------
    fraction
        Share of the trend threshold that suffices during a breakout.
    margin
        How far beyond the envelope, as a share of its width, counts as a breakout.
    noise_margin
        How far beyond the envelope, in the series' typical moves (its mean absolute
        change per sample, long-run or recent, whichever is larger), also counts: a range
        made wide by a healthy step (a batch job heating a core for an hour) otherwise
        hides a ramp past it until it is half that width further. On simulated
        development fleets 3 drained earlier than ``margin`` alone on 98 failures, and 2
        earlier than 3 on another 160 (55 more on twelve fresh fleets), each later on none
        and with no healthy node drained. Lower lets more noise through on a noisy
        batch-job plateau: of 200, a sample scored 0.8 on 3 (margin 3), 4 (2), 5 (1.5)
        and 9 (1), and twice in a row (a drain) on 2 with 1. The recent moves keep such a
        plateau's noise inside the margin (with the long-run moves alone some drained).
    held_noise_margin
        How far beyond the envelope, in the series' long-run typical moves alone, the
        level held over the last ``held_for`` samples also breaks out. The recent moves
        grow with a ramp whose noise grows with its level (p99 latency): a latency ramp
        with evidence past the breakout's share held its level past the range by twice
        its long-run moves 15 min before a sample cleared the margin its own noise had
        widened. A noisy plateau's single samples need the recent margin; its held
        samples all past the long-run one are rarer than that. On eight fresh fleets
        (2,192 node-days) 2 drained 28 failures earlier (101 min in all), none later,
        caught 2 more, and no healthy node either way; synthetic noisy plateaus,
        sawtooths and deploy blips drained none either way. On eight further fresh
        fleets (3,096 node-days), not used to choose it: 37 earlier (85 min), none later,
        no healthy node either way.
    shrink
        Per sample, an end the level has not held for ``rest`` samples moves this share
        of the width towards the other (an old extreme fades over about ``1 / shrink``
        samples: at 2e-2, under an hour of samples a minute apart). At 2e-3 (eight
        hours) a ramp six hours after a batch job still built its evidence under the
        job's top, a third of the way down. On six fresh fleets (1,192 node-days) 2e-2
        drained 59 failures earlier than 2e-3 (291 min in all) and 2 later (3 min), and
        no healthy node either way; noisy batch-job plateaus and sawtooths as before.
        5e-2 gained little more (61 earlier, 312 min). On eight further fresh fleets
        (2,192 node-days), not used to choose it: 97 earlier (395 min), 3 later (11
        min), no healthy node either way.
    rest
        Samples an end stays put after the level last held it. An excursion (a batch
        job, a deploy) widens the range, and a ramp whose trend evidence already
        suffices waits inside it until the excursion's extreme fades: with every end
        fading at 1e-3, a latency ramp whose evidence had been past the breakout's share
        for over ten minutes stayed under a top an earlier excursion had left at 0.74 s
        (0.65 s now, which drained it 11 min earlier). Fading faster alone also lifted
        the bottom under an hour-long plateau, so the quiet level after it broke out
        below, and a five-hour sawtooth's falls broke out below a bottom faded up since
        its last trough; an end held within the last two hours does not fade. On eight
        fresh fleets (2,192 node-days) 2e-3 with a 120-sample rest drained 65 failures
        earlier than 1e-3 without (193 min in all) and 10 later (23 min), and no healthy
        node either way; noisy batch-job plateaus and sawtooths as before, slow latency
        ramps on quiet series 2 samples later (the top of the noise band no longer fades
        while the noise keeps reaching it). On six further fresh fleets (1,192
        node-days), not used to choose it: 33 earlier (91 min), 8 later (16 min), no
        healthy node either way. (All measured with ``shrink`` 2e-3.)
    near
        Share of the breakout's margin within which the level holds an end (so its rest
        starts again). The noise rarely reaches the very extreme that set an end: held
        only there (0), an end aged through quiet hours and, once the level moved away,
        faded from its first sample; fading at 2e-2, the bottom under a 50-sample
        plateau rose so far that the quiet level after it broke out below (3 of 40 such
        plateaus winding down alarmed, none with 1).
    warmup
        Samples before a series' envelope may declare a breakout, at its start and after
        each silence (see :class:`Sustained`).
    hold
        Above this share of the trend threshold the envelope stops learning: a ramp
        must not widen the range it is about to break before it is noticed. It is
        ``fraction``'s share, where a breakout starts to count: at 0.4 the envelope
        went on learning a slow or noisy ramp's levels (three samples held are a level)
        while its evidence already sufficed, so the ramp dragged the range along, broke
        out only on single samples, and a drain (two in a row) waited; a leak that
        pinned memory at 100% went undrained. On development fleets (eight of 48
        node-days, four of 500) 0.25 drained 36 failures earlier than 0.4 (167 min in
        all) and 4 later (1 min each), caught one more, and drained no healthy node
        (nor more noisy batch-job plateaus or sawtooths). Lower (e.g. 0.05) reports
        ramps much earlier, but it also drained nodes on the first climbs of
        garbage-collection and rotation sawtooths; 0.15, on 500 node-day fleets, once a
        healthy node. On four fresh 48 node-day fleets 0.1 and 0.15 drained 11 and 9
        failures earlier (101 and 92 min in all, among them a slow latency ramp 0.25
        missed) and none later, but drained 12 and 6 of 200 noisy batch-job plateaus
        (1.8 times the level, 8% noise; 0.25: 1): the burst of evidence a step gives
        then stops the envelope below the plateau.
    held_for
        The envelope learns the level the last ``held_for`` samples all reached (their
        minimum for the top, maximum for the bottom), so it also sits a little inside the
        noise band, and more ramps break out before they end. On simulated development
        fleets (one sample a minute) 3 and 5 each drained earlier than 1 (the raw samples)
        on every failure that changed and drained no more healthy nodes; 5 gained more,
        but on a noisy batch-job plateau it took the step in so late that a noisy sample
        scored 0.8 twice in a row on 2% of plateaus (3: only once, on 3%); 10 drained
        healthy nodes after deploys.
    sustained
        Parameters of the inner :class:`Sustained` over :data:`INNER_DEFAULTS` (its score
        is the floor of this one).
    """

    layout = ("held_for",)  # the recent values kept per series

    def __init__(
        self,
        fraction: float = 0.25,
        margin: float = 0.5,
        noise_margin: float = NOISE_MARGIN,
        held_noise_margin: float = NOISE_MARGIN,
        shrink: float = 2e-2,
        rest: int = 120,
        near: float = 1.0,
        warmup: int = 60,
        hold: float = 0.25,
        held_for: int = HELD_FOR,
        sustained: dict[str, Any] | None = None,
    ):
        self.fraction = fraction
        self.margin = margin
        self.noise_margin = noise_margin
        self.held_noise_margin = held_noise_margin
        self.shrink = shrink
        self.rest = rest
        self.near = near
        self.warmup = warmup
        self.hold = hold
        self.held_for = held_for
        self.sustained = sustained
        self.inner_ = Sustained(**(INNER_DEFAULTS | (sustained or {})))
        # Per series: count, envelope, samples since each end was held, then the last
        # ``held_for`` values, oldest first.
        self.state_ = np.zeros((0, _STATE + held_for))

    def __setstate__(self, state: dict[str, Any]) -> None:
        rows = state["state_"]
        # Checkpoints from before held levels: the range they learnt stays, and the recent
        # values start at its middle, which widens nothing.
        if "held_for" not in state:
            middle = (rows[:, _LO] + rows[:, _HI]) / 2
            state["held_for"] = HELD_FOR
            rows = np.column_stack([rows, np.repeat(middle[:, None], HELD_FOR, 1)])
        # Checkpoints from before the ends rested: both ends count as just held.
        if rows.shape[1] == _LO_AGE + state["held_for"]:
            rows = np.column_stack([rows[:, :_LO_AGE], np.zeros((len(rows), 2)), rows[:, _LO_AGE:]])
        state["state_"] = rows
        state.setdefault("noise_margin", NOISE_MARGIN)
        state.setdefault("held_noise_margin", NOISE_MARGIN)
        state.setdefault("rest", 0)  # as it ran: every end faded
        state.setdefault("near", 0.0)  # as it ran: an end held only when reached
        self.__dict__.update(state)

    def _ensure(self, keys: np.ndarray) -> None:
        self.state_ = grow(self.state_, int(keys.max()) + 1 if len(keys) else 0)
        self.inner_._ensure(keys)

    def _step(
        self, columns: np.ndarray, s: np.ndarray, x: np.ndarray, t: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores and the envelope rows after the samples.

        ``columns`` (the inner state columns of the samples' series) learns the samples;
        ``s`` (their envelope rows) is only read.
        """
        inner = self.inner_
        base = inner._steps(columns, x, t)
        n, lo, hi = s[:, _N], s[:, _LO], s[:, _HI]
        first = n == 0
        width = hi - lo
        beyond = np.maximum(x - hi, lo - x)
        # Counted since the series' last restart: a node back from a reboot climbs back
        # to its level from below the range, which is no breakout.
        warm = np.minimum(n, columns[_SINCE]) >= self.warmup
        out = np.empty_like(s)
        out[:, _N] = n + 1
        recent = out[:, _STATE:]
        recent[:, :-1] = s[:, _STATE + 1 :]
        recent[:, -1] = x
        recent[first] = x[first, None]
        # The levels held over the last samples, this one included (column by column:
        # a reduction along rows of a few values costs several times more).
        held_hi, held_lo = recent[:, 0].copy(), recent[:, 0].copy()
        for j in range(1, recent.shape[1]):
            np.minimum(held_hi, recent[:, j], out=held_hi)
            np.maximum(held_lo, recent[:, j], out=held_lo)
        needed, held_needed = self._needed(columns, n + 1, width)
        # A held level is read against the long-run moves alone: a ramp whose noise grows
        # with it does not widen that margin.
        held_beyond = np.maximum(held_hi - hi, lo - held_lo)
        breaking = (beyond > needed) | (held_beyond > held_needed)
        breaking &= warm & (width > 0)
        trend = np.maximum(columns[_UP], columns[_DOWN])
        early = np.where(breaking, trend / (self.fraction * inner.h), 0.0)
        score = np.clip(np.maximum(base, early), 0.0, 1.0)
        # The envelope learns the levels held over the last samples (a spike or a short
        # blip moves neither end), and only while no trend builds up.
        learn = first | (trend <= self.hold * inner.h)
        # An end fades only once the level has not held it for ``rest`` samples: an old
        # excursion's extreme goes, the bottom under an hour-long plateau stays.
        # A level within the breakout's margin of an end holds it: noise rarely reaches
        # the very extreme that set an end, and an end that aged through quiet hours
        # would fade from the first sample the level moved away.
        near = needed * self.near
        hi_age = np.where(first | (held_hi >= hi - near), 0.0, s[:, _HI_AGE] + 1)
        lo_age = np.where(first | (held_lo <= lo + near), 0.0, s[:, _LO_AGE] + 1)
        out[:, _HI_AGE] = np.where(learn, hi_age, s[:, _HI_AGE])
        out[:, _LO_AGE] = np.where(learn, lo_age, s[:, _LO_AGE])
        step = self.shrink * width
        new_hi = np.where(first, x, np.maximum(held_hi, hi - step * (hi_age > self.rest)))
        new_lo = np.where(first, x, np.minimum(held_lo, lo + step * (lo_age > self.rest)))
        out[:, _HI] = np.where(learn, new_hi, hi)
        out[:, _LO] = np.where(learn, new_lo, lo)
        return score, out

    def _needed(
        self, columns: np.ndarray, seen: np.ndarray, width: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """How far beyond the envelope a sample, and a held level, break out.

        Each the nearer of two margins: a share of the width, or the series' typical
        moves. ``columns`` is the inner state after ``seen`` samples of each series.
        """
        # The inner detector's long-run mean absolute rate (for a sample: or its recent
        # one when larger, a noisier plateau under a batch job), times the typical gap;
        # bias-corrected alike (the gap learns from one sample later: 0.3% apart once warm).
        weight = _bias_weight(self.inner_.alpha_ref, seen.astype(np.intp), lowest=1, shift=-1)
        gap = _unbias(columns[_GAP], weight)
        long_run = _unbias(columns[_ABS], weight) * gap
        moves = np.maximum(long_run, columns[_FLOOR] * gap)
        room = self.margin * width
        moves *= self.noise_margin
        long_run *= self.held_noise_margin
        return np.minimum(room, moves, out=moves), np.minimum(room, long_run, out=long_run)

    def score_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> np.ndarray:
        self._ensure(keys)
        # Gathered copies: nothing learnt is written back.
        return self._step(self.inner_.columns_[:, keys], self.state_[keys], values, ts)[0]

    def learn_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> None:
        self.score_learn_many(keys, values, ts)

    def score_learn_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> np.ndarray:
        self._ensure(keys)
        at = rows_of(keys)
        columns = self.inner_.columns_[:, at]  # a view for a run of keys: learns in place
        score, self.state_[at] = self._step(columns, self.state_[at], values, ts)
        if not isinstance(at, slice):
            self.inner_.columns_[:, at] = columns
        return score
