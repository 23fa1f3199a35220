"""Shared fixtures: every test builds its own Settings and store (no shared globals)."""

from __future__ import annotations

import contextlib
import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from predictor.config import Settings
from predictor.store import Store, store_for_url

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
        # never created (the test failed before): nothing to clean
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(name)
        await nc.close()

    asyncio.run(delete())


# -- database backends -----------------------------------------------------------------------
# PostgreSQL cases never skip: without a server they fail, loudly (CI starts PostgreSQL).
PG_ADMIN_URL = os.environ.get(
    "PREDICTOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database, dropped after the test."""
    name = f"predictor_t_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield urlsplit(PG_ADMIN_URL)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL for a fresh store, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sub' / 'predictor.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A fresh store on each backend, closed after the test."""
    s = store_for_url(store_url)
    yield s
    s.close()
