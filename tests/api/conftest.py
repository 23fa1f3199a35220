"""Fixtures for API tests: the dev key as a request header (tests run with env == "dev")."""

from __future__ import annotations

import pytest

from predictor.config import Settings


@pytest.fixture
def dev_auth(settings: Settings) -> dict[str, str]:
    """``Authorization`` for the documented dev key, accepted with admin scope in dev only."""
    assert settings.env == "dev" and settings.dev_api_key
    return {"Authorization": f"Bearer {settings.dev_api_key}"}
