"""Batch training: history -> node feature snapshots -> fit -> evaluate -> register."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from predictor.config import Settings
from predictor.features import OnlineFeatures
from predictor.features.node import assemble, feature_names
from predictor.training.model import BatchModel
from predictor.training.registry import ModelRegistry

logger = logging.getLogger(__name__)
MAX_METRICS = 32
# What train_and_register reports to its ``progress`` callback, in order.
TRAIN_STAGES = ("features", "fit", "evaluate", "register")
HOLDOUT_FRACTION = 0.25


@dataclass
class Snapshots:
    """Node feature vectors on an event-time grid, with labels."""

    X: np.ndarray
    nodes: np.ndarray
    ts: np.ndarray
    y: np.ndarray  # 1 = the node fails within the horizon
    censored: np.ndarray  # our own drain may have prevented the outcome


def choose_metrics(samples: pd.DataFrame) -> list[str]:
    """Metrics that at least half of the nodes send (the model's named inputs)."""
    per_metric = samples.groupby("metric")["node"].nunique()
    n_nodes = samples["node"].nunique()
    common = per_metric[per_metric >= 0.5 * n_nodes].sort_values(ascending=False)
    return sorted(common.index[:MAX_METRICS].tolist())


def build_snapshots(
    samples: pd.DataFrame,
    events: pd.DataFrame,
    *,
    metrics: list[str],
    step_s: float,
    horizon_s: float,
    drains: pd.DataFrame | None = None,
) -> Snapshots:
    """One feature vector per node per ``step_s`` bucket in which the node reported.

    Each vector is what the online engine would hold at the node's latest sample of the
    bucket: every series' latest features at or before it (carried forward, so a series
    that skipped the bucket shows up as missing, as it does online). It is computed that
    way too: the history is replayed through :class:`OnlineFeatures` a bucket at a time,
    columnar over all series, so the cost is linear in the samples and memory holds the
    feature rows, not a feature vector per sample. ``X`` is float32 (the forest splits on
    float32 anyway; it halves the memory of ten million rows).
    """
    hist = _History.from_samples(samples, step_s=step_s)
    slots = {m: i for i, m in enumerate(metrics)}
    metric_slot = np.array([slots.get(m, -1) for m in hist.metric_names], dtype=np.int64)
    series_slot = metric_slot[hist.series_metric]
    width = len(feature_names(metrics))
    X = np.empty((len(hist.row_node), width), dtype=np.float32)
    state = OnlineFeatures()
    state.ensure(len(hist.series_node))
    for sample_lo, sample_hi, row_lo, row_hi in hist.buckets():
        part = slice(sample_lo, sample_hi)
        sid, rank = hist.sid[part], hist.rank[part]
        x, t = hist.value[part], hist.ts[part]
        for k in range(int(rank.max()) + 1):  # a series' k-th sample of the bucket
            at = rank == k
            state.update(sid[at], x[at], t[at])
        # Every series of the bucket's nodes that has reported so far, node by node.
        nodes = hist.row_node[row_lo:row_hi]
        first = hist.node_first_series[nodes]
        count = hist.node_first_series[nodes + 1] - first
        series_row = np.repeat(np.arange(len(nodes)), count)
        series = np.arange(len(series_row)) + np.repeat(first - (np.cumsum(count) - count), count)
        started = state.count_[series] > 0
        series, series_row = series[started], series_row[started]
        X[row_lo:row_hi] = assemble(
            values=state.values_[series],
            last_ts=state.last_ts(series),
            series_node=series_row,
            series_slot=series_slot[series],
            node_ts=hist.row_ts[row_lo:row_hi],
            n_metrics=len(metrics),
        )
    nodes = hist.node_names[hist.row_node]
    ts = hist.row_ts
    failures = events[events["kind"] == "failure"] if len(events) else events
    y = _within(hist, failures, horizon_s)
    censored = np.zeros(len(ts), dtype=bool)
    if drains is not None and len(drains):
        # A window that ended in our own drain never got the chance to fail: not healthy.
        censored = _within(hist, drains, horizon_s) & ~y
    return Snapshots(X=X, nodes=nodes, ts=ts, y=y.astype(int), censored=censored)


@dataclass
class _History:
    """A history's in-order samples sorted by (bucket, series), and its snapshot rows.

    Series ids are dense and sorted by (node, metric), so a node's series are one run
    (``node_first_series[n]:node_first_series[n + 1]``). Rows are (bucket, node) pairs in
    time order, nodes by name within a bucket.
    """

    node_names: np.ndarray  # object, sorted
    metric_names: np.ndarray  # object, sorted
    series_node: np.ndarray  # per series
    series_metric: np.ndarray  # per series
    node_first_series: np.ndarray  # (n_nodes + 1,)
    sid: np.ndarray  # per sample, sorted by (bucket, series); ingest order within
    rank: np.ndarray  # per sample: how many earlier samples of its series are in its bucket
    ts: np.ndarray
    value: np.ndarray
    sample_bucket_start: np.ndarray  # (n_buckets + 1,) sample offsets
    row_bucket_start: np.ndarray  # (n_buckets + 1,) row offsets
    row_node: np.ndarray  # per row
    row_ts: np.ndarray  # per row: the node's latest sample in the bucket

    @classmethod
    def from_samples(cls, samples: pd.DataFrame, *, step_s: float) -> _History:
        node_code, node_names = pd.factorize(samples["node"], sort=True)
        metric_code, metric_names = pd.factorize(samples["metric"], sort=True)
        key = node_code.astype(np.int64) * max(len(metric_names), 1) + metric_code
        ts = samples["ts"].to_numpy(dtype=float)
        # In order = after every earlier sample of its series in ingest order, exactly
        # as the online state sees it; the rest never moves the features.
        in_order = _in_order(key, ts)
        if not in_order.all():
            key, ts = key[in_order], ts[in_order]
        value = samples["value"].to_numpy(dtype=float)[in_order]
        codes, series_key = pd.factorize(key)
        by_key = np.argsort(series_key, kind="stable")
        dense = np.empty_like(by_key)
        dense[by_key] = np.arange(len(by_key))
        sid = dense[codes]
        series_key = series_key[by_key]
        n_metrics = max(len(metric_names), 1)
        series_node, series_metric = series_key // n_metrics, series_key % n_metrics
        bucket = np.floor(ts / step_s).astype(np.int64)
        bucket -= bucket.min(initial=0)
        # Stable: a series' samples within a bucket stay in ingest (= time) order.
        order = np.argsort(bucket * max(len(series_key), 1) + sid, kind="stable")
        sid, ts, value, bucket = sid[order], ts[order], value[order], bucket[order]
        n = len(sid)
        new_run = np.ones(n, dtype=bool)
        new_run[1:] = (sid[1:] != sid[:-1]) | (bucket[1:] != bucket[:-1])
        run_start = np.flatnonzero(new_run)
        rank = np.arange(n) - np.repeat(run_start, np.diff(np.append(run_start, n)))
        node = series_node[sid]
        new_row = np.ones(n, dtype=bool)
        new_row[1:] = (node[1:] != node[:-1]) | (bucket[1:] != bucket[:-1])
        row_start = np.flatnonzero(new_row)
        bucket_start = np.concatenate([[0], np.flatnonzero(np.diff(bucket)) + 1, [n]])
        return cls(
            node_names=np.asarray(node_names, dtype=object),
            metric_names=np.asarray(metric_names, dtype=object),
            series_node=series_node,
            series_metric=series_metric,
            node_first_series=np.searchsorted(series_node, np.arange(len(node_names) + 1)),
            sid=sid,
            rank=rank,
            ts=ts,
            value=value,
            sample_bucket_start=bucket_start[:-1] if not n else bucket_start,
            # A bucket's first sample starts its first row.
            row_bucket_start=np.searchsorted(row_start, bucket_start),
            row_node=node[row_start],
            row_ts=np.maximum.reduceat(ts, row_start) if n else np.zeros(0),
        )

    def buckets(self) -> Iterator[tuple[int, int, int, int]]:
        """``(sample_lo, sample_hi, row_lo, row_hi)`` of each bucket, in time order."""
        s, r = self.sample_bucket_start, self.row_bucket_start
        for b in range(len(s) - 1):
            yield int(s[b]), int(s[b + 1]), int(r[b]), int(r[b + 1])


def _in_order(key: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Whether each sample is later than every earlier sample (ingest order) of its key."""
    times = pd.Series(ts)
    before = times.groupby(key, sort=False).cummax().groupby(key, sort=False).shift()
    return (before.isna() | (times > before)).to_numpy()


def _within(hist: _History, events: pd.DataFrame, horizon_s: float) -> np.ndarray:
    """Whether each snapshot row has an event of ``events`` in ``(ts, ts + horizon]``."""
    n = len(hist.row_ts)
    if events is None or not len(events) or not n:
        return np.zeros(n, dtype=bool)
    node = pd.Index(hist.node_names).get_indexer(events["node"])
    known = node >= 0
    upcoming = pd.DataFrame(
        {"node": node[known], "ts": events["ts"].to_numpy(dtype=float)[known]}
    ).sort_values("ts")
    upcoming["next_ts"] = upcoming["ts"]
    rows = pd.DataFrame({"node": hist.row_node, "ts": hist.row_ts, "row": np.arange(n)})
    # The first event of the same node strictly after the row's time.
    nxt = pd.merge_asof(
        rows.sort_values("ts"), upcoming, on="ts", by="node", direction="forward",
        allow_exact_matches=False,
    )  # fmt: skip
    hit = np.zeros(n, dtype=bool)
    hit[nxt["row"].to_numpy()] = (nxt["next_ts"] - nxt["ts"] <= horizon_s).to_numpy()
    return hit


def evaluate(model: BatchModel, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Ranking quality of the model's risk on labelled snapshots."""
    out: dict[str, Any] = {"rows": int(len(y)), "positives": int(y.sum())}
    probability = model.failure_probability(X)
    score = probability if probability is not None else model.anomaly_score(X)
    if 0 < y.sum() < len(y):
        out["average_precision"] = float(average_precision_score(y, score))
        out["roc_auc"] = float(roc_auc_score(y, score))
    return out


def train(
    *,
    samples: pd.DataFrame,
    events: pd.DataFrame,
    settings: Settings,
    drains: pd.DataFrame | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[BatchModel, dict[str, Any], Snapshots, np.ndarray]:
    """Fit on the earlier 75% of the history, evaluate on the rest.

    Returns the model, its manifest fields, the snapshots and the holdout mask.
    ``progress`` is called with each stage of :data:`TRAIN_STAGES` as it starts.
    """
    stage = progress or (lambda name: None)
    if samples.empty:
        raise ValueError("no samples to train on")
    stage("features")
    metrics = choose_metrics(samples)
    snaps = build_snapshots(
        samples, events, metrics=metrics, step_s=settings.train_step_s,
        horizon_s=settings.horizon_s, drains=drains,
    )  # fmt: skip
    keep = ~snaps.censored
    split = np.quantile(snaps.ts, 1 - HOLDOUT_FRACTION)
    fit_rows = keep & (snaps.ts < split)
    holdout = keep & (snaps.ts >= split)
    stage("fit")
    model = BatchModel(
        metrics, horizon_s=settings.horizon_s, seed=settings.seed, n_jobs=settings.train_n_jobs
    ).fit(snaps.X[fit_rows], snaps.y[fit_rows])
    stage("evaluate")
    manifest = {
        "training_range": [float(snaps.ts[fit_rows].min()), float(snaps.ts[fit_rows].max())],
        "holdout_range": [float(split), float(snaps.ts.max())],
        "rows": int(fit_rows.sum()),
        "censored_rows": int(snaps.censored.sum()),
        "evaluation": evaluate(model, snaps.X[holdout], snaps.y[holdout]),
    }
    return model, manifest, snaps, holdout


def train_and_register(
    *,
    samples: pd.DataFrame,
    events: pd.DataFrame,
    settings: Settings,
    drains: pd.DataFrame | None = None,
    promote: str = "always",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train, save a version, and promote it (``always`` or ``if_no_worse``).

    With ``if_no_worse`` the current model is evaluated on the *same* holdout and the new
    one is promoted only if its average precision is at least as good.
    """
    registry = ModelRegistry.from_settings(settings)
    model, manifest, snaps, holdout = train(
        samples=samples, events=events, settings=settings, drains=drains, progress=progress
    )
    if progress:
        progress("register")
    version = registry.save(model, manifest)
    new_ap = manifest["evaluation"].get("average_precision")
    report: dict[str, Any] = {"version": version, "evaluation": manifest["evaluation"]}
    promoted = True
    # Compare with the model that actually serves (a refused current one does not).
    current = registry.load_serving()[0] if promote == "if_no_worse" else None
    if current is not None:
        old_model, _ = current
        # The current model is scored on the new holdout through its own metric list.
        old_snaps = build_snapshots(
            samples, events, metrics=old_model.metrics, step_s=settings.train_step_s,
            horizon_s=settings.horizon_s, drains=drains,
        )  # fmt: skip
        old_eval = evaluate(old_model, old_snaps.X[holdout], old_snaps.y[holdout])
        report["current_evaluation"] = old_eval
        old_ap = old_eval.get("average_precision")
        promoted = new_ap is not None and (old_ap is None or new_ap >= old_ap)
    if promoted:
        registry.promote(version)
    report["promoted"] = promoted
    return report
