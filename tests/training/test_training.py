"""Batch model, registry and promotion."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import average_precision_score, roc_auc_score

from predictor.config import Settings
from predictor.features import FEATURES, batch_features
from predictor.features.node import AGGREGATES, PER_METRIC, assemble
from predictor.simulate import FleetSpec, simulate
from predictor.training import (
    BatchModel,
    ModelError,
    ModelRegistry,
    build_snapshots,
    train_and_register,
)
from predictor.training.train import choose_metrics


@pytest.fixture(scope="module")
def fleet():
    return simulate(FleetSpec(nodes=12, duration_s=2 * 86400, step_s=120.0, seed=11))


def test_compiled_forest_equals_sklearn() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 8))
    X[rng.random(X.shape) < 0.05] = np.nan
    model = BatchModel(["a"]).fit(X)
    expected = -model.isolation_.score_samples(X)
    np.testing.assert_allclose(model.forest_.raw_anomaly(X), expected, rtol=1e-12)
    outlier = np.full((1, 8), 25.0)
    assert model.anomaly_score(outlier)[0] > np.quantile(model.anomaly_score(X), 0.99)


def test_no_classifier_without_enough_failures() -> None:
    X = np.random.default_rng(1).normal(size=(500, 4))
    y = np.zeros(500, dtype=int)
    y[:3] = 1
    assert BatchModel(["a"]).fit(X, y).failure_probability(X) is None


def reference_features(samples: pd.DataFrame, metrics: list[str], step_s: float) -> pd.DataFrame:
    """Snapshots from the pandas feature definition, carried forward with merge_asof."""
    feats = batch_features(samples)
    feats["bucket"] = np.floor(feats["ts"] / step_s).astype(np.int64)
    per_series = feats.groupby(["node", "metric", "bucket"]).last().reset_index()
    rows = feats.groupby(["node", "bucket"])["ts"].max().rename("node_ts").reset_index()
    rows = rows.sort_values(["bucket", "node"], ignore_index=True)
    rows["row"] = np.arange(len(rows))
    grid = rows.merge(per_series[["node", "metric"]].drop_duplicates(), on="node")
    merged = pd.merge_asof(
        grid.sort_values("bucket"), per_series.sort_values("bucket"), on="bucket",
        by=["node", "metric"],
    ).dropna(subset=["ts"])  # fmt: skip
    X = assemble(
        values=merged[list(FEATURES)].to_numpy(dtype=float),
        last_ts=merged["ts"].to_numpy(dtype=float),
        series_node=merged["row"].to_numpy(dtype=np.int64),
        series_slot=merged["metric"].map({m: i for i, m in enumerate(metrics)}).fillna(-1)
        .to_numpy(dtype=np.int64),
        node_ts=rows["node_ts"].to_numpy(dtype=float),
        n_metrics=len(metrics),
    )  # fmt: skip
    return rows.assign(X=list(X))


def test_snapshots_equal_the_pandas_feature_definition(fleet) -> None:
    samples = fleet.samples.iloc[: len(fleet.samples) // 4]
    # Ingest order across series does not matter; a late sample never moves the features.
    samples = samples.sample(frac=1.0, random_state=0).sort_values("ts", kind="stable")
    late = samples.iloc[[100]].assign(ts=lambda f: f["ts"] - 400.0, value=1e6)
    samples = pd.concat([samples, late], ignore_index=True)
    metrics = ["cpu", "disk", "not_sent"]  # one the fleet does not send: NaN
    snaps = build_snapshots(samples, fleet.events, metrics=metrics, step_s=300.0, horizon_s=1800.0)
    ref = reference_features(samples, metrics, 300.0)
    assert snaps.X.shape == (len(ref), len(metrics) * len(PER_METRIC) + len(AGGREGATES))
    np.testing.assert_array_equal(snaps.nodes, ref["node"].to_numpy())
    np.testing.assert_array_equal(snaps.ts, ref["node_ts"].to_numpy())
    expected = np.stack(ref["X"].to_numpy())
    assert np.isnan(expected).any() and not np.isnan(expected).all()
    np.testing.assert_allclose(snaps.X, expected, rtol=1e-6, atol=1e-9, equal_nan=True)


def test_snapshots_of_an_empty_history_are_empty() -> None:
    empty = pd.DataFrame({"node": [], "metric": [], "ts": [], "value": []})
    snaps = build_snapshots(empty, empty.assign(kind=[]), metrics=["cpu"], step_s=60.0,
                            horizon_s=600.0)  # fmt: skip
    assert snaps.X.shape == (0, len(PER_METRIC) + len(AGGREGATES))
    assert len(snaps.y) == len(snaps.nodes) == 0


def test_subsampled_fit_keeps_the_models_quality() -> None:
    """Above its row limits the model subsamples; held-out ranking stays as good."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(24_000, 6))
    X[rng.random(X.shape) < 0.02] = np.nan
    signal = np.nan_to_num(X[:, 0]) + 0.5 * np.nan_to_num(X[:, 1]) ** 2
    y = (signal + rng.normal(scale=1.0, size=len(X)) > 2.5).astype(int)
    fit, held = slice(0, 16_000), slice(16_000, None)
    whole = BatchModel(["a"]).fit(X[fit], y[fit])
    small = BatchModel(["a"], isolation_max_rows=2_000, classifier_max_rows=8_000)
    small.fit(X[fit], y[fit])
    assert whole.failure_probability(X) is not None
    ap = {
        name: average_precision_score(y[held], m.failure_probability(X[held]))
        for name, m in (("whole", whole), ("small", small))
    }
    assert ap["small"] > 0.5 and abs(ap["small"] - ap["whole"]) < 0.04, ap
    # Weighted back to the history's class balance: the probabilities keep its failure rate.
    probability = small.failure_probability(X[held])
    assert abs(probability.mean() - y[held].mean()) < 0.02
    # The anomaly score's scale comes from the sample: still 0..1 around the same median.
    assert 0.4 < np.mean(small.anomaly_score(X[fit]) == 0.0) < 0.6
    rank = np.corrcoef(small.anomaly_score(X[held]), whole.anomaly_score(X[held]))[0, 1]
    assert rank > 0.8


def episodes(
    rng: np.random.Generator, rows: int, starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Noise, with a 60-row ramp on the first feature before each failure."""
    X = rng.normal(size=(rows, 3))
    y = np.zeros(rows, dtype=int)
    for start in starts:
        y[start : start + 60] = 1
        X[start : start + 60, 0] += np.linspace(0.0, 3.0, 60)
    return X, y


def test_a_history_whose_latest_rows_hold_no_failure_still_gets_a_calibrated_model() -> None:
    """Calibration sees every failure of the history, not only its latest rows: twelve
    failures, none in the last quarter, and the probabilities still rank new failures
    above healthy rows at about the history's failure rate."""
    rng = np.random.default_rng(3)
    X, y = episodes(rng, 6_000, rng.choice(np.arange(0, 4_400, 300), size=12, replace=False))
    model = BatchModel(["a"]).fit(X, y)
    fresh_X, fresh_y = episodes(rng, 6_000, np.arange(100, 6_000, 500))
    probability = model.failure_probability(fresh_X)
    assert probability is not None
    # As good a ranking as the uncalibrated classifier's, within the ties isotonic adds.
    plain = HistGradientBoostingClassifier(max_iter=150, l2_regularization=1.0, random_state=0)
    plain_auc = roc_auc_score(fresh_y, plain.fit(X, y).predict_proba(fresh_X)[:, 1])
    assert roc_auc_score(fresh_y, probability) > plain_auc - 0.02 > 0.7
    assert abs(probability.mean() - fresh_y.mean()) < 0.02
    assert len(np.unique(probability)) > 10  # not flattened to a few values


def test_snapshots_label_the_horizon_before_each_failure(fleet) -> None:
    snaps = build_snapshots(
        fleet.samples, fleet.events, metrics=choose_metrics(fleet.samples), step_s=120.0,
        horizon_s=1800.0,
    )  # fmt: skip
    failures = fleet.events[fleet.events["kind"] == "failure"]
    assert len(failures) > 0
    for f in failures.itertuples():
        mine = (snaps.nodes == f.node) & (snaps.ts < f.ts)
        inside = mine & (snaps.ts >= f.ts - 1800.0)
        assert snaps.y[inside].all()
        assert not snaps.y[
            mine & (snaps.ts < f.ts - 1800.0 - 1e-6) & (snaps.ts > f.ts - 3 * 3600)
        ].any()


def test_our_own_drains_censor_instead_of_labelling_healthy(fleet) -> None:
    node = fleet.samples["node"].iloc[0]
    t = float(fleet.samples["ts"].median())
    drains = pd.DataFrame({"node": [node], "ts": [t]})
    snaps = build_snapshots(
        fleet.samples, fleet.events, metrics=choose_metrics(fleet.samples), step_s=120.0,
        horizon_s=1800.0, drains=drains,
    )  # fmt: skip
    window = (snaps.nodes == node) & (snaps.ts < t) & (snaps.ts >= t - 1800.0)
    assert window.any() and snaps.censored[window & (snaps.y == 0)].all()
    assert not snaps.censored[snaps.nodes != node].any()


def test_train_register_promote_rollback(fleet, settings: Settings) -> None:
    first = train_and_register(samples=fleet.samples, events=fleet.events, settings=settings)
    registry = ModelRegistry(settings.models_dir)
    assert first["promoted"] and registry.current() == first["version"]
    manifest = registry.versions()[0]
    assert manifest["metrics"] == choose_metrics(fleet.samples)
    assert (
        set(manifest["files"]) == {"model.joblib"} and len(manifest["files"]["model.joblib"]) == 64
    )
    assert (
        manifest["training_range"][0]
        < manifest["training_range"][1]
        <= manifest["holdout_range"][0]
    )

    second = train_and_register(
        samples=fleet.samples, events=fleet.events, settings=settings, promote="if_no_worse"
    )
    # Same data, same seed: the new model is exactly as good, so it is promoted.
    assert second["promoted"], second
    assert registry.current() == second["version"]
    assert registry.rollback() == first["version"]
    assert registry.current() == first["version"]


def test_a_retrain_that_cannot_be_shown_no_worse_is_not_promoted(fleet, settings: Settings) -> None:
    train_and_register(samples=fleet.samples, events=fleet.events, settings=settings)
    registry = ModelRegistry(settings.models_dir)
    current = registry.current()
    # Without failure labels the new model has no evaluation to compare: keep the current.
    no_labels = fleet.events.iloc[0:0]
    report = train_and_register(
        samples=fleet.samples, events=no_labels, settings=settings, promote="if_no_worse"
    )
    assert report["promoted"] is False
    assert registry.current() == current
    assert len(registry.versions()) == 2  # saved for inspection, not served


def test_tampered_model_is_refused(fleet, settings: Settings) -> None:
    report = train_and_register(samples=fleet.samples, events=fleet.events, settings=settings)
    registry = ModelRegistry(settings.models_dir)
    path = settings.models_dir / report["version"] / "model.joblib"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ModelError, match="sha256"):
        registry.load(report["version"])
    manifest_path = settings.models_dir / report["version"] / "manifest.json"
    manifest_path.write_text(json.dumps({"files": {"model.joblib": "0" * 64}}))
    with pytest.raises(ModelError):
        registry.promote(report["version"])
