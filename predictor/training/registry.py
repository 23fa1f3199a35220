"""Model versions on disk: ``models/<version>/`` (joblib + manifest), ``models/current``.

The manifest records the model's metrics and features, the training range, the
evaluation, and the sha256 of every file; a file whose hash does not match is refused.
The manifest itself carries an HMAC-SHA256 (over its canonical JSON without the ``hmac``
field) made with ``Settings.model_hmac_key``, so a manifest rewritten to match a swapped
model file is refused too. ``models/history`` lists promotions in order, so a rollback
returns to the previous one, and a service whose current model does not verify serves the
newest earlier one that does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib

from predictor.config import Settings
from predictor.training.model import BatchModel

logger = logging.getLogger(__name__)

MODEL_FILE = "model.joblib"
MANIFEST = "manifest.json"
# The documented dev-only signing key: a dev install works out of the box, prod must set its own.
DEV_MODEL_HMAC_KEY = "predictor-dev-model-key"


class ModelError(RuntimeError):
    """A model version is missing, incomplete or tampered with."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_hmac(manifest: dict[str, Any], key: str) -> str:
    """HMAC-SHA256 of the manifest's canonical JSON (sorted keys, no spaces, no ``hmac``)."""
    body = {k: v for k, v in manifest.items() if k != "hmac"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hmac.new(key.encode(), canonical.encode(), hashlib.sha256).hexdigest()


def model_hmac_key(settings: Settings) -> str:
    """The manifest signing key; prod refuses to run without one configured."""
    if settings.model_hmac_key:
        return settings.model_hmac_key
    if settings.env == "prod":
        raise ModelError("PREDICTOR_MODEL_HMAC_KEY is required when PREDICTOR_ENV=prod")
    return DEV_MODEL_HMAC_KEY


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ModelRegistry:
    """Saves, lists, promotes and loads model versions under one directory."""

    def __init__(self, root: Path, *, hmac_key: str = DEV_MODEL_HMAC_KEY):
        self.root = Path(root)
        self.hmac_key = hmac_key

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        """The registry of ``settings.models_dir``, signing with the configured key."""
        return cls(settings.models_dir, hmac_key=model_hmac_key(settings))

    def save(self, model: BatchModel, manifest: dict[str, Any]) -> str:
        """Store a new version (not promoted); return its name."""
        self.root.mkdir(parents=True, exist_ok=True)
        version = datetime.now(UTC).strftime("v%Y%m%dT%H%M%S%f")
        folder = self.root / version
        folder.mkdir()
        joblib.dump(model, folder / MODEL_FILE)
        full = {
            **manifest,
            "version": version,
            "created": datetime.now(UTC).isoformat(),
            "metrics": model.metrics,
            "features": model.feature_names,
            "horizon_s": model.horizon_s,
            "has_classifier": model.classifier_ is not None,
            "files": {MODEL_FILE: _sha256(folder / MODEL_FILE)},
        }
        # Sign what a reader will parse back, not the in-memory objects it was made from.
        full = json.loads(json.dumps(full, default=str))
        full["hmac"] = manifest_hmac(full, self.hmac_key)
        _write_atomic(folder / MANIFEST, json.dumps(full, indent=2))
        return version

    def versions(self) -> list[dict[str, Any]]:
        """Manifests of all stored versions, oldest first."""
        if not self.root.exists():
            return []
        out = []
        for folder in sorted(self.root.iterdir()):
            if (folder / MANIFEST).exists():
                out.append(json.loads((folder / MANIFEST).read_text()))
        return out

    def current(self) -> str | None:
        pointer = self.root / "current"
        return pointer.read_text().strip() or None if pointer.exists() else None

    def _history(self) -> list[str]:
        path = self.root / "history"
        return path.read_text().split() if path.exists() else []

    def promote(self, version: str) -> None:
        self.load(version)  # refuse to promote what cannot be loaded
        history = [v for v in self._history() if v != version] + [version]
        _write_atomic(self.root / "history", "\n".join(history) + "\n")
        _write_atomic(self.root / "current", version + "\n")

    def rollback(self) -> str:
        """Promote the version promoted before the current one; return it."""
        history = self._history()
        if len(history) < 2:
            raise ModelError("nothing to roll back to")
        previous = history[-2]
        _write_atomic(self.root / "history", "\n".join(history[:-1]) + "\n")
        _write_atomic(self.root / "current", previous + "\n")
        return previous

    def load(self, version: str) -> tuple[BatchModel, dict[str, Any]]:
        """Load a version after checking every file against the manifest."""
        folder = self.root / version
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"model {version}: unreadable manifest ({exc})") from exc
        if not isinstance(manifest, dict):
            raise ModelError(f"model {version}: manifest is not a JSON object")
        signature = manifest.get("hmac")
        if not isinstance(signature, str) or not hmac.compare_digest(
            signature, manifest_hmac(manifest, self.hmac_key)
        ):
            raise ModelError(
                f"model {version}: manifest HMAC does not match (unsigned, tampered with,"
                " or signed with another PREDICTOR_MODEL_HMAC_KEY)"
            )
        for name, expected in manifest.get("files", {}).items():
            path = folder / name
            if not path.exists() or _sha256(path) != expected:
                raise ModelError(f"model {version}: {name} does not match its manifest sha256")
        try:
            model = joblib.load(folder / MODEL_FILE)
        except Exception as exc:  # e.g. pickled by incompatible library versions
            raise ModelError(f"model {version}: {MODEL_FILE} cannot be loaded ({exc})") from exc
        if manifest.get("features") != model.feature_names:
            # Saved by a version that built other feature vectors: its trees would read
            # the wrong columns.
            raise ModelError(
                f"model {version}: trained on another feature layout than this version"
                " builds; retrain it (make train)"
            )
        return model, manifest

    def load_current(self) -> tuple[BatchModel, dict[str, Any]] | None:
        version = self.current()
        return self.load(version) if version else None

    def load_serving(self) -> tuple[tuple[BatchModel, dict[str, Any]] | None, list[str]]:
        """The current model or, if it is refused, the newest earlier promotion that verifies.

        Returns the loaded model (``None`` when no promoted version verifies) and the versions
        refused on the way, each refusal logged: a tampered or truncated model never serves,
        and the fleet keeps the last good one instead of running without a model.
        """
        current = self.current()
        if current is None:
            return None, []
        history = self._history()
        # The current one first, then earlier promotions newest first.
        earlier = history[: history.index(current)] if current in history else history
        refused: list[str] = []
        for version in [current, *reversed(earlier)]:
            try:
                return self.load(version), refused
            except ModelError as exc:
                logger.error("refusing model %s: %s", version, exc)
                refused.append(version)
        return None, refused
