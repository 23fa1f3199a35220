"""Batch model, registry and promotion."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from predictor.config import Settings
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
