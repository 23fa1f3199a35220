"""Node-level feature vectors for the batch models, built from per-series features.

A batch model names the metrics it was trained on; each contributes its per-series
features under ``<metric>:<feature>``. Metric-agnostic aggregates over *all* of a node's
series follow, so a model still sees something useful for metrics it never saw. A metric
the node does not send is NaN: models treat that as missing, never as zero load.
"""

from __future__ import annotations

import numpy as np

from predictor.features.spec import FEATURES

# Not the raw level ("last"): on simulated dev fleets it let the classifier learn which
# nodes failed in its history (cross-fleet average precision 0.14-0.30 with it, 0.27-0.34
# without), and z-score and drift already say how far a level is from the node's own.
PER_METRIC = ("robust_z", "slope", "std_fast", "gap", "drift")
AGGREGATES = ("max_abs_z", "mean_abs_z", "max_gap", "missing_fraction")
_INDEX = [FEATURES.index(name) for name in PER_METRIC]
_Z = FEATURES.index("robust_z")
_GAP = FEATURES.index("gap")


def feature_names(metrics: list[str]) -> list[str]:
    return [f"{m}:{f}" for m in metrics for f in PER_METRIC] + list(AGGREGATES)


def assemble(
    *,
    values: np.ndarray,
    last_ts: np.ndarray,
    series_node: np.ndarray,
    series_slot: np.ndarray,
    node_ts: np.ndarray,
    n_metrics: int,
) -> np.ndarray:
    """One row per node: per-metric features for the model's metrics, then aggregates.

    Parameters
    ----------
    values
        ``(n_series, len(FEATURES))`` latest features of each series.
    last_ts
        ``(n_series,)`` time of each series' latest sample.
    series_node
        ``(n_series,)`` row (0..n_nodes-1) of the node each series belongs to.
    series_slot
        ``(n_series,)`` index of the series' metric among the model's metrics, -1 if none.
    node_ts
        ``(n_nodes,)`` the time each node is evaluated at (its latest sample).
    """
    n_nodes = len(node_ts)
    per_metric = np.full((n_nodes, n_metrics, len(PER_METRIC)), np.nan)
    known = series_slot >= 0
    per_metric[series_node[known], series_slot[known]] = values[known][:, _INDEX]

    # A series registered in this batch but not folded in yet has NaN features: skip it.
    abs_z = np.nan_to_num(np.abs(values[:, _Z]))
    max_abs_z = np.zeros(n_nodes)
    sum_abs_z = np.zeros(n_nodes)
    max_gap = np.zeros(n_nodes)
    count = np.zeros(n_nodes)
    missing = np.zeros(n_nodes)
    np.maximum.at(max_abs_z, series_node, abs_z)
    np.add.at(sum_abs_z, series_node, abs_z)
    np.maximum.at(max_gap, series_node, np.nan_to_num(values[:, _GAP]))
    np.add.at(count, series_node, 1.0)
    # A series that did not report at the node's latest time is missing at that moment.
    np.add.at(missing, series_node, (last_ts < node_ts[series_node]).astype(float))
    aggregates = np.column_stack(
        [max_abs_z, sum_abs_z / np.maximum(count, 1), max_gap, missing / np.maximum(count, 1)]
    )
    return np.hstack([per_metric.reshape(n_nodes, -1), aggregates])
