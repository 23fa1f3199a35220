"""Shared fixtures: every test builds its own Settings and store (no shared globals)."""

from __future__ import annotations

from pathlib import Path

import pytest

from predictor.config import Settings

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        db=tmp_path / "predictor.db",
        models_dir=tmp_path / "models",
        state_path=tmp_path / "state.joblib",
        online_detectors=["ewma_z"],
    )
