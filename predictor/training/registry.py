"""Model versions on disk: ``models/<version>/`` (joblib + manifest), ``models/current``.

The manifest records the model's metrics and features, the training range, the
evaluation, and the sha256 of every file; a file whose hash does not match is refused.
``models/history`` lists promotions in order, so a rollback returns to the previous one.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib

from predictor.training.model import BatchModel

MODEL_FILE = "model.joblib"
MANIFEST = "manifest.json"


class ModelError(RuntimeError):
    """A model version is missing, incomplete or tampered with."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ModelRegistry:
    """Saves, lists, promotes and loads model versions under one directory."""

    def __init__(self, root: Path):
        self.root = Path(root)

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
        _write_atomic(folder / MANIFEST, json.dumps(full, indent=2, default=str))
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
        for name, expected in manifest.get("files", {}).items():
            path = folder / name
            if not path.exists() or _sha256(path) != expected:
                raise ModelError(f"model {version}: {name} does not match its manifest sha256")
        return joblib.load(folder / MODEL_FILE), manifest

    def load_current(self) -> tuple[BatchModel, dict[str, Any]] | None:
        version = self.current()
        return self.load(version) if version else None
