"""Shared fixtures: every test builds its own Settings and store (no shared globals)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
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


NATS_URL = "nats://127.0.0.1:4222"  # CI starts nats-server with JetStream (.ci/run)


@pytest.fixture
def nats_stream() -> Iterator[dict[str, str]]:
    """PREDICTOR_* settings of a JetStream stream of this test's own; deleted afterwards."""
    import asyncio

    import nats

    name = f"test-{uuid.uuid4().hex[:12]}"
    yield {
        "PREDICTOR_NATS_URL": NATS_URL,
        "PREDICTOR_STREAM_NAME": name,
        "PREDICTOR_STREAM_SUBJECT": f"{name}.samples",
    }

    async def delete() -> None:
        nc = await nats.connect(NATS_URL)
        try:
            await nc.jetstream().delete_stream(name)
        except Exception:  # never created (the test failed before), nothing to clean
            pass
        await nc.close()

    asyncio.run(delete())
