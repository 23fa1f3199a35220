"""Signed model manifests: HMAC checks, refusal of tampered models, fallback to the last good."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from predictor.api import create_app
from predictor.config import Settings
from predictor.service import Runtime
from predictor.training import BatchModel, ModelError, ModelRegistry
from predictor.training.registry import DEV_MODEL_HMAC_KEY, MANIFEST, MODEL_FILE, manifest_hmac


def small_model(seed: int) -> BatchModel:
    X = np.random.default_rng(seed).normal(size=(200, 4))
    return BatchModel(["cpu"]).fit(X)


def promoted_versions(registry: ModelRegistry, count: int) -> list[str]:
    versions = []
    for seed in range(count):
        version = registry.save(small_model(seed), {"rows": 200 + seed})
        registry.promote(version)
        versions.append(version)
    return versions


def manifest_path(registry: ModelRegistry, version: str) -> Path:
    return registry.root / version / MANIFEST


def rewrite_manifest(registry: ModelRegistry, version: str, **changes: object) -> None:
    path = manifest_path(registry, version)
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, **changes}))


def test_saved_manifest_carries_a_verifiable_hmac(settings: Settings) -> None:
    registry = ModelRegistry.from_settings(settings)
    (version,) = promoted_versions(registry, 1)
    manifest = json.loads(manifest_path(registry, version).read_text())
    assert manifest["hmac"] == manifest_hmac(manifest, DEV_MODEL_HMAC_KEY)
    # Canonical JSON: the key order of the file does not matter, the content does.
    assert manifest_hmac(dict(reversed(manifest.items())), DEV_MODEL_HMAC_KEY) == manifest["hmac"]
    _, loaded = registry.load(version)
    assert loaded["version"] == version and loaded["rows"] == 200


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda r, v: rewrite_manifest(r, v, rows=10**6), id="field-changed"),
        pytest.param(lambda r, v: rewrite_manifest(r, v, hmac="0" * 64), id="hmac-replaced"),
        pytest.param(lambda r, v: rewrite_manifest(r, v, hmac=None), id="hmac-removed"),
    ],
)
def test_a_manifest_whose_hmac_does_not_match_is_refused(settings: Settings, tamper) -> None:
    registry = ModelRegistry.from_settings(settings)
    (version,) = promoted_versions(registry, 1)
    tamper(registry, version)
    with pytest.raises(ModelError, match="HMAC does not match"):
        registry.load(version)


def test_a_swapped_model_with_a_matching_sha256_is_still_refused(settings: Settings) -> None:
    """Rewriting the sha256 to fit a swapped file needs the key to re-sign the manifest."""
    registry = ModelRegistry.from_settings(settings)
    first, second = promoted_versions(registry, 2)
    swapped = registry.root / second / MODEL_FILE
    swapped.write_bytes((registry.root / first / MODEL_FILE).read_bytes())
    with pytest.raises(ModelError, match="sha256"):
        registry.load(second)
    manifest = json.loads(manifest_path(registry, second).read_text())
    fixed = registry.load(first)[1]["files"]  # the hash that fits the swapped file
    rewrite_manifest(registry, second, files=fixed)
    assert json.loads(manifest_path(registry, second).read_text())["hmac"] == manifest["hmac"]
    with pytest.raises(ModelError, match="HMAC"):
        registry.load(second)


def test_a_model_signed_with_another_key_is_refused(settings: Settings) -> None:
    other = ModelRegistry(settings.models_dir, hmac_key="someone-else")
    version = other.save(small_model(0), {})
    with pytest.raises(ModelError, match="HMAC"):
        ModelRegistry.from_settings(settings).load(version)
    keyed = settings.model_copy(update={"model_hmac_key": "someone-else"})
    assert ModelRegistry.from_settings(keyed).load(version)[1]["version"] == version


def test_prod_refuses_to_start_without_a_signing_key(settings: Settings) -> None:
    prod = settings.model_copy(update={"env": "prod"})
    with pytest.raises(ModelError, match="PREDICTOR_MODEL_HMAC_KEY"):
        ModelRegistry.from_settings(prod)
    with pytest.raises(ModelError, match="PREDICTOR_MODEL_HMAC_KEY"):
        Runtime.build(prod)
    assert not prod.db.exists()  # refused before touching the store
    keyed = prod.model_copy(update={"model_hmac_key": "k" * 32})
    assert ModelRegistry.from_settings(keyed).hmac_key == "k" * 32


def test_tampered_current_model_falls_back_to_the_newest_good_one(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    registry = ModelRegistry.from_settings(settings)
    oldest, middle, newest = promoted_versions(registry, 3)
    model_file = registry.root / newest / MODEL_FILE
    model_file.write_bytes(model_file.read_bytes()[:-100])  # truncated

    loaded, refused = registry.load_serving()
    assert loaded is not None and loaded[1]["version"] == middle
    assert refused == [newest]
    assert f"refusing model {newest}" in caplog.text

    rewrite_manifest(registry, middle, rows=1)  # the next one is tampered with too
    loaded, refused = registry.load_serving()
    assert loaded is not None and loaded[1]["version"] == oldest
    assert refused == [newest, middle]
    assert registry.current() == newest  # refusing does not rewrite the promotion record

    # The service serves the last good version and says so on /readyz.
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz", headers={"Authorization": "Bearer dev"}).json()
    assert ready["model"] == oldest
    assert ready["model_refused"] == [newest, middle]


def test_no_verifiable_model_means_no_model_not_a_crash(settings: Settings) -> None:
    registry = ModelRegistry.from_settings(settings)
    (only,) = promoted_versions(registry, 1)
    rewrite_manifest(registry, only, rows=1)
    runtime = Runtime.build(settings)
    assert runtime.model_version is None and runtime.model_refused == [only]
    assert runtime.scorer.engine.model is None
    runtime.store.close()


def test_a_model_saved_with_another_feature_layout_is_refused(settings: Settings) -> None:
    """An upgrade that changed the node feature vector: the old file is signed and intact,
    but its trees read other columns; it is refused, never served."""
    registry = ModelRegistry.from_settings(settings)
    older, newer = promoted_versions(registry, 2)
    path = manifest_path(registry, newer)
    manifest = json.loads(path.read_text())
    manifest["features"] = [*manifest["features"], "cpu:last"]  # as an earlier layout had
    manifest["hmac"] = manifest_hmac(manifest, DEV_MODEL_HMAC_KEY)
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="another feature layout"):
        registry.load(newer)
    loaded, refused = registry.load_serving()
    assert loaded is not None and loaded[1]["version"] == older and refused == [newer]
