"""The one feature definition, computed online (numpy state) and in batch (pandas).

Per series (one node's one metric), on every in-order sample ``x`` at time ``t``:

========== ===================================================================
last       ``x``
ewm_fast   exponentially weighted mean, ``alpha = ALPHA_FAST`` per sample
ewm_slow   the same with ``ALPHA_SLOW`` (the series' own baseline)
std_fast   exponentially weighted standard deviation (``ALPHA_FAST``)
std_slow   the same with ``ALPHA_SLOW``
rate       ``(x - x_prev) / (t - t_prev)`` per second, 0 on the first sample
slope      exponentially weighted mean of ``rate`` (``ALPHA_SLOW``): the trend
robust_z   ``(x - baseline_prev) / (1.2533 * mad_prev)``, against the baseline and the
           mean absolute deviation learnt *before* this sample; 0 during warm-up
gap        ``t - t_prev``: seconds since the series' previous sample (staleness)
ewm_long   exponentially weighted mean with ``ALPHA_LONG``: the long-run level
std_long   its exponentially weighted standard deviation
drift      ``(ewm_fast - ewm_long) / std_long``: how far the recent level has moved
           from the long-run one; a slow ramp that ``robust_z`` gets used to shows here
========== ===================================================================

A sample whose ``t`` is not after the series' latest ``t`` is stored but does not move
the features (event time: a late sample cannot rewrite the past).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from predictor.detectors.base import grow, grow_columns, row_blocks, rows_of

ALPHA_FAST = 0.3
ALPHA_SLOW = 0.05
ALPHA_LONG = 0.005
WARMUP = 5
Z_CLIP = 50.0
# Mean absolute deviation of a Gaussian is sigma * sqrt(2/pi); this turns it back to sigma.
MAD_TO_SIGMA = 1.2533
FEATURES = (
    "last", "ewm_fast", "ewm_slow", "std_fast", "std_slow", "rate", "slope", "robust_z", "gap",
    "ewm_long", "std_long", "drift",
)  # fmt: skip


def _scale(mad: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    # The relative floor keeps a flat series from dividing by zero.
    return MAD_TO_SIGMA * mad + 1e-3 * np.abs(baseline) + 1e-9


class OnlineFeatures:
    """Feature state of many series, updated with one sample per series per call."""

    def __init__(self) -> None:
        self.count_ = np.zeros(0, dtype=np.int64)
        # One row per quantity (a fleet's column is contiguous): last_x, last_t, m_fast,
        # v_fast, m_slow, v_slow, slope, mad, m_long, v_long.
        self.columns_ = np.zeros((10, 0))
        self.values_ = np.full((0, len(FEATURES)), np.nan)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Checkpoints from before the columnar layout kept one row per series.
        if "state_" in state:
            state["columns_"] = np.ascontiguousarray(state.pop("state_").T)
        self.__dict__.update(state)

    def ensure(self, size: int) -> None:
        self.count_ = grow(self.count_, size)
        self.columns_ = grow_columns(self.columns_, size)
        self.values_ = grow(self.values_, size, np.nan)

    def update(self, keys: np.ndarray, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Fold in one sample per key; return the mask of samples that were in order."""
        if not len(keys):
            return np.zeros(0, dtype=bool)
        self.ensure(int(keys.max()) + 1)
        at = rows_of(keys)
        in_order = (self.count_[at] == 0) | (t > self.columns_[1, at])
        if not in_order.all():
            keys, x, t = keys[in_order], x[in_order], t[in_order]
            at = rows_of(keys)
        for part, rows in row_blocks(at, len(keys)):
            self._fold(rows, x[part], t[part])
        return in_order

    def _fold(self, at: slice | np.ndarray, x: np.ndarray, t: np.ndarray) -> None:
        """Fold in samples that are in order (a block small enough to stay in cache)."""
        # With a slice ``at`` these are views of the state: all reads come before writes.
        count, s = self.count_[at], self.columns_[:, at]
        first = count == 0
        if first.any():
            # A new series starts from its own sample (gap, rate, spread and slope 0):
            # from this state the updates below give exactly that.
            s = s.copy()
            s[:, first] = 0.0
            for row in (0, 2, 4, 8):
                s[row, first] = x[first]
            s[1, first] = t[first]
        last_x, last_t = s[0], s[1]
        gap = t - last_t
        rate = (x - last_x) / np.where(gap > 0, gap, 1.0)
        m_fast, v_fast = _ewm_step(s[2], s[3], x, ALPHA_FAST)
        baseline_prev, mad_prev = s[4], s[7]
        m_slow, v_slow = _ewm_step(baseline_prev, s[5], x, ALPHA_SLOW)
        slope = s[6] + ALPHA_SLOW * (rate - s[6])
        deviation = np.abs(x - baseline_prev)
        mad = mad_prev + ALPHA_SLOW * (deviation - mad_prev)
        m_long, v_long = _ewm_step(s[8], s[9], x, ALPHA_LONG)
        drift = _drift(m_fast, m_long, v_long)
        z = np.where(count >= WARMUP, (x - baseline_prev) / _scale(mad_prev, baseline_prev), 0.0)
        for row, new in enumerate((x, t, m_fast, v_fast, m_slow, v_slow, slope, mad, m_long,
                                   v_long)):  # fmt: skip
            self.columns_[row, at] = new
        self.count_[at] = count + 1
        _put_columns(self.values_, at, x, m_fast, m_slow, np.sqrt(v_fast), np.sqrt(v_slow),
                     rate, slope, np.clip(z, -Z_CLIP, Z_CLIP), gap, m_long, np.sqrt(v_long),
                     drift)  # fmt: skip

    def last_ts(self, keys: np.ndarray) -> np.ndarray:
        return np.where(self.count_[keys] > 0, self.columns_[1, keys], np.nan)


def _put_columns(table: np.ndarray, at: slice | np.ndarray, *columns: np.ndarray) -> None:
    """``table[at] = column_stack(columns)``, written in place when ``at`` is a slice."""
    if isinstance(at, slice):
        for j, column in enumerate(columns):
            table[at, j] = column
    else:
        table[at] = np.column_stack(columns)


def _drift(m_fast: np.ndarray, m_long: np.ndarray, v_long: np.ndarray) -> np.ndarray:
    scale = np.sqrt(v_long) + 1e-3 * np.abs(m_long) + 1e-9
    return np.clip((m_fast - m_long) / scale, -Z_CLIP, Z_CLIP)


def _ewm_step(
    mean: np.ndarray, var: np.ndarray, x: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """One step of the exponentially weighted mean/variance (pandas ``adjust=False``)."""
    delta = x - mean
    return mean + alpha * delta, (1 - alpha) * (var + alpha * delta * delta)


def batch_features(samples: pd.DataFrame) -> pd.DataFrame:
    """The same features with pandas over a history (rows in ingest order).

    Returns the in-order rows of ``samples`` (node, metric, ts, value) with one column per
    feature, in the original row order.
    """
    frame = samples[["node", "metric", "ts", "value"]].reset_index(drop=True)
    keys = [frame["node"], frame["metric"]]
    # In order = after every earlier sample of its series, exactly as the online state sees it.
    prior_max = frame.groupby(keys)["ts"].transform(lambda s: s.cummax().shift())
    frame = frame[prior_max.isna() | (frame["ts"] > prior_max)].reset_index(drop=True)
    grouped = frame.groupby(["node", "metric"], sort=False)
    out = frame.copy()
    out["count"] = grouped.cumcount()

    def ewm(column: pd.Series, alpha: float, stat: str) -> pd.Series:
        result = getattr(
            column.groupby([frame["node"], frame["metric"]], sort=False).ewm(
                alpha=alpha, adjust=False
            ),
            stat,
        )(**({"bias": True} if stat == "var" else {}))
        return result.reset_index(level=[0, 1], drop=True).sort_index()

    value = frame["value"]
    out["last"] = value
    out["ewm_fast"] = ewm(value, ALPHA_FAST, "mean")
    out["ewm_slow"] = ewm(value, ALPHA_SLOW, "mean")
    out["std_fast"] = np.sqrt(ewm(value, ALPHA_FAST, "var"))
    out["std_slow"] = np.sqrt(ewm(value, ALPHA_SLOW, "var"))
    out["gap"] = grouped["ts"].diff().fillna(0.0)
    delta = grouped["value"].diff().fillna(0.0)
    out["rate"] = np.where(out["gap"] > 0, delta / out["gap"].where(out["gap"] > 0, 1.0), 0.0)
    out["slope"] = ewm(out["rate"], ALPHA_SLOW, "mean")
    baseline_prev = out.groupby(["node", "metric"], sort=False)["ewm_slow"].shift().fillna(value)
    deviation = (value - baseline_prev).abs()
    mad = ewm(deviation, ALPHA_SLOW, "mean")
    mad_prev = mad.groupby([frame["node"], frame["metric"]], sort=False).shift().fillna(0.0)
    z = (value - baseline_prev) / _scale(mad_prev.to_numpy(), baseline_prev.to_numpy())
    out["robust_z"] = np.where(out["count"] >= WARMUP, np.clip(z, -Z_CLIP, Z_CLIP), 0.0)
    out["ewm_long"] = ewm(value, ALPHA_LONG, "mean")
    out["std_long"] = np.sqrt(ewm(value, ALPHA_LONG, "var"))
    out["drift"] = _drift(
        out["ewm_fast"].to_numpy(), out["ewm_long"].to_numpy(), out["std_long"].to_numpy() ** 2
    )
    return out.drop(columns="count")
