"""Batch training: history -> node feature snapshots -> fit -> evaluate -> register."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from predictor.config import Settings
from predictor.features import FEATURES, batch_features
from predictor.features.node import assemble
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
    that skipped the bucket shows up as missing, as it does online).
    """
    feats = batch_features(samples)
    feats["bucket"] = np.floor(feats["ts"] / step_s).astype(np.int64)
    per_series = feats.groupby(["node", "metric", "bucket"], sort=False).last().reset_index()
    node_buckets = (
        feats.groupby(["node", "bucket"], sort=False)["ts"].max().rename("node_ts").reset_index()
    ).sort_values(
        ["bucket", "node"], ignore_index=True
    )  # time order: the model calibrates on the end
    node_buckets["row"] = np.arange(len(node_buckets))
    series_of_node = per_series[["node", "metric"]].drop_duplicates()
    grid = node_buckets.merge(series_of_node, on="node").sort_values("bucket")
    right = per_series.sort_values("bucket")
    merged = pd.merge_asof(grid, right, on="bucket", by=["node", "metric"]).dropna(subset=["ts"])
    slots = {m: i for i, m in enumerate(metrics)}
    X = assemble(
        values=merged[list(FEATURES)].to_numpy(dtype=float),
        last_ts=merged["ts"].to_numpy(dtype=float),
        series_node=merged["row"].to_numpy(dtype=np.int64),
        series_slot=merged["metric"].map(slots).fillna(-1).to_numpy(dtype=np.int64),
        node_ts=node_buckets["node_ts"].to_numpy(dtype=float),
        n_metrics=len(metrics),
    )
    nodes = node_buckets["node"].to_numpy(dtype=object)
    ts = node_buckets["node_ts"].to_numpy(dtype=float)
    failures = events[events["kind"] == "failure"] if len(events) else events
    y = _within(nodes, ts, failures, horizon_s)
    censored = np.zeros(len(ts), dtype=bool)
    if drains is not None and len(drains):
        # A window that ended in our own drain never got the chance to fail: not healthy.
        censored = _within(nodes, ts, drains, horizon_s) & ~y
    return Snapshots(X=X, nodes=nodes, ts=ts, y=y.astype(int), censored=censored)


def _within(
    nodes: np.ndarray, ts: np.ndarray, events: pd.DataFrame, horizon_s: float
) -> np.ndarray:
    """Whether each (node, ts) has an event of ``events`` in ``(ts, ts + horizon]``."""
    hit = np.zeros(len(ts), dtype=bool)
    if events is None or not len(events):
        return hit
    for node, group in events.groupby("node"):
        mask = nodes == node
        times = np.sort(group["ts"].to_numpy(dtype=float))
        nxt = np.searchsorted(times, ts[mask], side="right")
        upcoming = np.where(nxt < len(times), times[np.minimum(nxt, len(times) - 1)], np.inf)
        hit[mask] = upcoming - ts[mask] <= horizon_s
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
    model = BatchModel(metrics, horizon_s=settings.horizon_s, seed=settings.seed).fit(
        snaps.X[fit_rows], snaps.y[fit_rows]
    )
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
