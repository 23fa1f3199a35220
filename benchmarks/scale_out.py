"""How far one scorer worker goes: stream -> store -> score, against the embedded scorer.

The same fleet scrapes are (a) appended to the embedded SQLite store and scored by the
single-process scorer (the baseline), and (b) published to a JetStream stream and read,
stored in PostgreSQL and scored by one :class:`~predictor.scoring.worker.Worker`. Both are
timed from the first sample to the last one scored; publishing happens before (b) starts,
as a backlog the worker catches up on.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import psycopg

from benchmarks.common import STEP_S, fleet_step
from predictor.actuators.log import LogActuator
from predictor.config import Settings
from predictor.scoring.worker import Worker
from predictor.service import Runtime
from predictor.store import store_for_url
from predictor.stream import Publisher

T0 = 1_764_115_200.0
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
NATS_URL = "nats://127.0.0.1:4222"


def bench_scale_out(
    *, workdir: Path, n_nodes: int, n_metrics: int, steps: int, partitions: int = 8
) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    batches = [fleet_step(n_nodes, n_metrics, s, t0=T0, rng=rng) for s in range(steps)]
    total = sum(len(b) for b in batches)

    # (a) the embedded path: one process, SQLite, the store's sample log.
    settings = Settings(db=workdir / "embedded.db", models_dir=workdir / "models")
    runtime = Runtime.build(settings)
    assert runtime.scorer is not None
    started = time.perf_counter()
    for batch in batches:
        runtime.store.append_samples(batch)
        runtime.scorer.drain_backlog()
    embedded_s = time.perf_counter() - started
    runtime.store.close()

    # (b) one worker: JetStream partitions -> PostgreSQL -> the same engine.
    name = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = urlsplit(PG_ADMIN_URL)._replace(path=f"/{name}").geturl()
    stream = Settings(
        database_url=url, models_dir=workdir / "models", nats_url=NATS_URL,
        stream_name=name, stream_subject=f"{name}.samples", stream_partitions=partitions,
    )  # fmt: skip
    publisher = Publisher(stream)
    publisher.start()
    store = store_for_url(url)
    try:
        for batch in batches:
            publisher.publish(batch)
        last_ts = T0 + (steps - 1) * STEP_S
        worker_s = asyncio.run(_time_worker(stream, store, total, n_nodes, last_ts))
    finally:
        publisher.close()
        store.close()
        asyncio.run(_delete_stream(name))
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    return {
        "samples": total,
        "embedded": {"samples_per_s": total / embedded_s, "seconds": embedded_s},
        "worker": {"samples_per_s": total / worker_s, "seconds": worker_s},
        "ratio": embedded_s / worker_s,
        "partitions": partitions,
    }


async def _time_worker(
    settings: Settings, store: Any, total: int, n_nodes: int, last_ts: float
) -> float:
    """Seconds until one worker has stored every sample and scored every node's last one."""
    worker = Worker(settings=settings, store=store, actuator=LogActuator(), worker_id="bench")
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(worker.run(stop))

    def done() -> bool:
        # One cheap aggregate, so that polling takes little from the worker being timed.
        with psycopg.connect(str(settings.database_url)) as conn:
            row = conn.execute(
                "SELECT (SELECT coalesce(max(position), 0) FROM sample_batches), count(*), min(ts)"
                " FROM risk_latest"
            ).fetchone()
        assert row is not None
        return row[0] == total and row[1] == n_nodes and row[2] >= last_ts

    while not done():
        await asyncio.sleep(0.2)
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    return elapsed


async def _delete_stream(name: str) -> None:
    import nats

    nc = await nats.connect(NATS_URL)
    try:
        await nc.jetstream().delete_stream(name)
    finally:
        await nc.close()
