"""Static threshold rules as operators write them in Prometheus, as a drain baseline.

Each rule is a condition on one canonical metric (``cpu``, ``disk``, ...; found under
either naming of the simulator, see :func:`canonical_kind`) that must hold for ``for_s``
seconds of event time, like a Prometheus alerting rule with ``for: 5m``. A rule *fires*
once per episode: at the first sample where its condition has held continuously for
``for_s``. A gap longer than ``stale_s`` between samples ends an episode (Prometheus marks
a series stale after 5 minutes without samples). A firing is a drain decision; a
``cooldown_s`` per node merges firings of several rules into one decision, as the policy
does for risk.

Everything is vectorised over the samples with numpy and pandas, per (node, metric)
series sorted by time: rolling least squares for ``predict_linear`` via cumulative sums,
a time-based rolling median for the latency rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from predictor.simulate import CANONICAL_METRICS, PROMETHEUS_NAMES

FOR_S = 300.0
STALE_S = 300.0
Condition = Literal["above", "above_median_x", "predict_linear_above"]


@dataclass(frozen=True)
class Rule:
    """One alerting rule on a canonical metric.

    ``condition`` is ``above`` (``value > threshold``), ``above_median_x`` (``value >
    threshold * median over the last median_window_s``) or ``predict_linear_above``
    (least-squares fit over the last ``range_s``, extrapolated ``ahead_s`` from now, above
    ``threshold``).
    """

    name: str
    metric: str
    condition: Condition
    threshold: float
    for_s: float = FOR_S
    range_s: float = 3600.0
    ahead_s: float = 4 * 3600.0
    median_window_s: float = 86_400.0


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("cpu > 0.9 for 5m", "cpu", "above", 0.9),
    Rule("memory > 0.9 for 5m", "memory", "above", 0.9),
    Rule("disk > 0.9 for 5m", "disk", "above", 0.9),
    Rule("error_rate > 0.05 for 5m", "error_rate", "above", 0.05),
    Rule("latency_p99 > 3x median(1d) for 5m", "latency_p99", "above_median_x", 3.0),
    Rule("temperature > 85 for 5m", "temperature", "above", 85.0),
    Rule("predict_linear(disk[1h], 4h) > 1 for 5m", "disk", "predict_linear_above", 1.0),
)

_KIND_OF_NAME = {name: kind for kind, name in PROMETHEUS_NAMES.items()} | {
    kind: kind for kind in CANONICAL_METRICS
}


def canonical_kind(metric: str) -> str | None:
    """The canonical metric (``"disk"``, ...) a metric name stands for, under any naming.

    >>> canonical_kind("node_filesystem_used_ratio"), canonical_kind("disk"), canonical_kind("x")
    ('disk', 'disk', None)
    """
    return _KIND_OF_NAME.get(metric)


def _series(samples: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The samples of every metric standing for ``kind``, sorted by node then time."""
    names = [m for m in samples["metric"].unique() if canonical_kind(str(m)) == kind]
    part = samples.loc[samples["metric"].isin(names), ["node", "metric", "ts", "value"]]
    part = part.sort_values(["node", "metric", "ts"], kind="stable", ignore_index=True)
    series = part["node"].astype(str) + "\x00" + part["metric"].astype(str)
    part["series"] = pd.factorize(series)[0]
    return part


def _window_start(series: np.ndarray, ts: np.ndarray, range_s: float) -> np.ndarray:
    """Index of the first row of the same series with ``ts > row ts - range_s``.

    Rows are sorted by series then time; a composite key keeps series apart so one
    ``searchsorted`` serves them all.
    """
    span = float(ts.max() - ts.min()) + 2 * range_s + 1.0
    key = series.astype(np.float64) * span + (ts - ts.min())
    return np.searchsorted(key, key - range_s, side="right")


def predict_linear(
    series: np.ndarray, ts: np.ndarray, values: np.ndarray, *, range_s: float, ahead_s: float
) -> np.ndarray:
    """Prometheus ``predict_linear(v[range], ahead)`` evaluated at every sample.

    Least squares over the samples of the same series in ``(ts - range_s, ts]``, the line
    evaluated ``ahead_s`` after ``ts``. NaN with fewer than two samples in the range.

    >>> s = np.zeros(4, dtype=int); t = np.array([0.0, 60, 120, 180])
    >>> predict_linear(s, t, t / 600, range_s=3600, ahead_s=600).round(2).tolist()
    [nan, 1.1, 1.2, 1.3]
    """
    start = _window_start(series, ts, range_s)
    # Times relative to each series' first sample keep the sums well conditioned.
    first = np.zeros(len(ts), dtype=np.int64)
    if len(ts):
        new = np.r_[True, series[1:] != series[:-1]]
        first = np.maximum.accumulate(np.where(new, np.arange(len(ts)), 0))
    t = ts - ts[first]
    sums = [np.r_[0.0, np.cumsum(x)] for x in (np.ones_like(t), t, values, t * t, t * values)]
    end = np.arange(1, len(ts) + 1)
    n, st, sv, stt, stv = (c[end] - c[start] for c in sums)
    denominator = n * stt - st * st
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (n * stv - st * sv) / denominator
        at_now = sv / n + slope * (t - st / n)
    prediction = at_now + slope * ahead_s
    return np.where((n >= 2) & (denominator > 1e-9), prediction, np.nan)


def _rolling_median(part: pd.DataFrame, window_s: float) -> np.ndarray:
    """Median of each series over ``(ts - window_s, ts]`` (time-based, like *_over_time)."""
    frame = pd.DataFrame(
        {
            "series": part["series"].to_numpy(),
            "value": part["value"].to_numpy(),
        },
        index=pd.to_datetime(part["ts"].to_numpy(), unit="s"),
    )
    rolled = frame.groupby("series", sort=True)["value"].rolling(f"{int(window_s)}s").median()
    # groupby-rolling returns series-major order: the same order as ``part``.
    return rolled.to_numpy()


def condition(rule: Rule, part: pd.DataFrame) -> np.ndarray:
    """Whether ``rule``'s condition holds at every row of ``part`` (see :func:`_series`)."""
    values = part["value"].to_numpy(dtype=float)
    if rule.condition == "above":
        return values > rule.threshold
    if rule.condition == "above_median_x":
        return values > rule.threshold * _rolling_median(part, rule.median_window_s)
    predicted = predict_linear(
        part["series"].to_numpy(),
        part["ts"].to_numpy(dtype=float),
        values,
        range_s=rule.range_s,
        ahead_s=rule.ahead_s,
    )
    return predicted > rule.threshold


def firings(
    series: np.ndarray,
    ts: np.ndarray,
    holds: np.ndarray,
    *,
    for_s: float,
    stale_s: float = STALE_S,
) -> np.ndarray:
    """Row indices where a condition first has held for ``for_s`` in its episode.

    An episode is a run of consecutive rows of one series where the condition holds,
    with no gap longer than ``stale_s`` between them.

    >>> s = np.zeros(8, dtype=int); t = np.arange(8) * 60.0
    >>> firings(s, t, np.array([0, 1, 1, 1, 1, 1, 1, 1], bool), for_s=300).tolist()
    [6]
    """
    if not len(ts):
        return np.zeros(0, dtype=np.int64)
    gap = np.r_[np.inf, np.diff(ts)]
    new_series = np.r_[True, series[1:] != series[:-1]]
    previous_holds = np.r_[False, holds[:-1]]
    starts = holds & (new_series | ~previous_holds | (gap > stale_s))
    episode = np.cumsum(starts)
    # By row index, not by time: times start over in each series.
    start_row = np.maximum.accumulate(np.where(starts, np.arange(len(ts)), 0))
    ripe = holds & (ts - ts[start_row] >= for_s)
    rows = np.flatnonzero(ripe)
    # The first ripe row of each episode only.
    _, first = np.unique(episode[rows], return_index=True)
    return rows[first]


def rule_firings(samples: pd.DataFrame, rules: tuple[Rule, ...] = DEFAULT_RULES) -> pd.DataFrame:
    """Every rule's firings over ``samples``: columns ``node, ts, rule``, sorted by ts."""
    frames = []
    parts: dict[str, pd.DataFrame] = {}
    for rule in rules:
        part = parts.get(rule.metric)
        if part is None:
            part = parts[rule.metric] = _series(samples, rule.metric)
        if part.empty:
            continue
        ts = part["ts"].to_numpy(dtype=float)
        rows = firings(part["series"].to_numpy(), ts, condition(rule, part), for_s=rule.for_s)
        frames.append(
            pd.DataFrame({"node": part["node"].to_numpy()[rows], "ts": ts[rows], "rule": rule.name})
        )
    if not frames:
        return pd.DataFrame({"node": [], "ts": [], "rule": []})
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["ts", "node"], kind="stable", ignore_index=True)


def with_cooldown(fired: pd.DataFrame, cooldown_s: float) -> pd.DataFrame:
    """Keep a node's firing only if ``cooldown_s`` passed since its previous kept one."""
    kept = []
    for _, group in fired.sort_values("ts", kind="stable").groupby("node", sort=False):
        last = -np.inf
        for index, ts in zip(group.index, group["ts"].to_numpy(), strict=True):
            if ts - last >= cooldown_s:
                kept.append(index)
                last = ts
    return fired.loc[kept].sort_values(["ts", "node"], kind="stable", ignore_index=True)


def rule_drains(
    samples: pd.DataFrame,
    *,
    rules: tuple[Rule, ...] = DEFAULT_RULES,
    cooldown_s: float = 900.0,
) -> pd.DataFrame:
    """Drain decisions of ``rules`` together: ``node, ts, rule`` (one per episode)."""
    return with_cooldown(rule_firings(samples, rules), cooldown_s)
