"""Scorer workers in one process, with the real NATS server and a shared SQLite store.

The SIGKILL case (leases expiring, a checkpoint replayed) runs with real processes and
PostgreSQL in tests/integration/test_scale_out.py; here: sharing and clean handover.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from predictor.actuators.log import LogActuator
from predictor.config import Settings
from predictor.ingest.batch import SampleBatch
from predictor.scoring.worker import Worker
from predictor.store import SQLiteStore
from predictor.stream import Publisher

NODES = [f"n{i:02d}" for i in range(16)]
PARTITIONS = 4


def step_batch(step: int, t0: float = 1.7e9) -> SampleBatch:
    rng = np.random.default_rng(step)
    node = np.repeat(NODES, 2)
    metric = np.tile(["cpu", "mem"], len(NODES))
    return SampleBatch.from_columns(
        node, metric, np.full(len(node), t0 + 10.0 * step), rng.random(len(node))
    )


async def until(check, timeout_s: float = 60.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.mark.integration
def test_workers_share_partitions_and_hand_them_over(
    tmp_path: Path, nats_stream: dict[str, str]
) -> None:
    settings = Settings(
        db=tmp_path / "shared.db",
        models_dir=tmp_path / "models",
        nats_url=nats_stream["PREDICTOR_NATS_URL"],
        stream_name=nats_stream["PREDICTOR_STREAM_NAME"],
        stream_subject=nats_stream["PREDICTOR_STREAM_SUBJECT"],
        stream_partitions=PARTITIONS,
        lease_ttl_s=2.0,
        checkpoint_every_s=0.2,
    )
    store = SQLiteStore(settings.db)
    publisher = Publisher(settings)
    publisher.start()

    def stored() -> int:
        return store.count_samples()

    def scored_up_to(step: int) -> bool:
        rows = store.latest_risk()
        return len(rows) == len(NODES) and min(r["ts"] for r in rows) >= 1.7e9 + 10.0 * step

    def owned_by(worker: Worker) -> set[int]:
        return {lease["partition"] for lease in store.leases() if lease["worker"] == worker.id}

    async def scenario() -> None:
        first = Worker(settings=settings, store=store, actuator=LogActuator(), worker_id="a")
        second = Worker(settings=settings, store=store, actuator=LogActuator(), worker_id="b")
        stop_first, stop_second = asyncio.Event(), asyncio.Event()
        for step in range(10):
            publisher.publish(step_batch(step))
        running_first = asyncio.create_task(first.run(stop_first))
        await until(lambda: scored_up_to(9))
        assert owned_by(first) == set(range(PARTITIONS))

        # A second worker joins: the first hands half of its partitions over.
        running_second = asyncio.create_task(second.run(stop_second))
        await until(lambda: len(owned_by(first)) == len(owned_by(second)) == PARTITIONS // 2)
        for step in range(10, 20):
            publisher.publish(step_batch(step))
        await until(lambda: scored_up_to(19))

        # The first stops cleanly: its partitions move at once, from its checkpoints.
        stop_first.set()
        await running_first
        await until(lambda: owned_by(second) == set(range(PARTITIONS)))
        for step in range(20, 30):
            publisher.publish(step_batch(step))
        await until(lambda: scored_up_to(29))
        stop_second.set()
        await running_second

    try:
        asyncio.run(scenario())
        assert stored() == 30 * len(NODES) * 2  # every sample once
        history = store.risk_history(NODES[0], limit=1000)
        assert history["ts"].is_unique
        assert len(history) == 30  # one point per step: none lost, none doubled
    finally:
        publisher.close()
        store.close()
