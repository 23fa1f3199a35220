"""Scale-out on loopback: 2 API replicas, 3 scorer workers, PostgreSQL and NATS JetStream.

A simulated fleet streams through both replicas; one worker is SIGKILLed mid-stream. Its
partitions must be served again within a bounded time, every acknowledged sample must be
stored exactly once, every node must keep getting risk, and no node may be drained twice.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest

from predictor.store import store_for_url
from tests.server_process import DEV_AUTH, ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 6
NODES = [f"node-{i:02d}" for i in range(18)]
METRICS = ["cpu", "mem", "disk", "errors"]
STEP_S = 10.0
STEPS_BEFORE_KILL, STEPS_AFTER_KILL = 40, 40
SHIFTED = NODES[:4]  # these nodes' metrics jump at SHIFT_STEP: the policy drains them
SHIFT_STEP = 25
TAKEOVER_DEADLINE_S = 90.0  # lease TTL 3 s; generous for a loaded 2-core machine


def fleet_step(rng: np.random.Generator, step: int, t0: float) -> dict:
    samples = []
    for node, metric in itertools.product(NODES, METRICS):
        value = 0.3 + 0.02 * rng.standard_normal()
        if node in SHIFTED and step >= SHIFT_STEP:
            value += 5.0
        samples.append({"node": node, "metric": metric, "ts": t0 + step * STEP_S, "value": value})
    return {"samples": samples}


def test_replicas_and_workers_survive_a_killed_worker(
    tmp_path: Path, pg_url: str, nats_stream: dict[str, str], wait_until: Callable[..., Any]
) -> None:
    env = {
        "PREDICTOR_DATABASE_URL": pg_url,
        **nats_stream,
        "PREDICTOR_STREAM_PARTITIONS": str(PARTITIONS),
        "PREDICTOR_LEASE_TTL_S": "3",
        "PREDICTOR_CHECKPOINT_EVERY_S": "1",
        "PREDICTOR_DRY_RUN": "false",  # the log actuator: executed drains, nothing real
        "PREDICTOR_ENTER_THRESHOLD": "0.7",
        "PREDICTOR_MIN_DURATION_S": "10",
        "PREDICTOR_BUDGET_MAX_NODES": "100",
        "PREDICTOR_BUDGET_MAX_FRACTION": "1.0",
        "PREDICTOR_FAILSAFE_SPIKE_FRACTION": "1.0",
        "PREDICTOR_POOL_WIDE_FRACTION": "2.0",  # the shifted nodes rise together, on purpose
        "PREDICTOR_AUTO_UNDRAIN": "false",
    }
    db = None  # the store is PREDICTOR_DATABASE_URL's PostgreSQL
    workers = [
        ServerProcess(tmp_path, db=db, env={**env, "PREDICTOR_WORKER_ID": f"w{i}"},
                      role="worker", name=f"worker-{i}")
        for i in range(3)
    ]  # fmt: skip
    apis = [ServerProcess(tmp_path, db=db, env=env, role="api", name=f"api-{i}") for i in range(2)]
    processes = [*workers, *apis]

    def wait(check: Callable[[], Any], what: str) -> Any:
        return wait_until(check, deadline_s=TAKEOVER_DEADLINE_S, what=what)

    try:
        for proc in processes:
            proc.start()
        client = httpx.Client(headers=DEV_AUTH, timeout=30)

        def owners() -> dict | None:
            status = client.get(f"{apis[0].url}/readyz").json()
            return status if status["partitions_owned"] == PARTITIONS else None

        def balanced() -> dict | None:
            status = owners()
            return status if status and set(status["workers"]) == {"w0", "w1", "w2"} else None

        wait_until(
            balanced,
            deadline_s=TAKEOVER_DEADLINE_S,
            what="every partition owned, by all three workers",
        )

        rng = np.random.default_rng(7)
        t0 = time.time() - 3600
        acknowledged: set[tuple[str, str, float]] = set()

        def send(step: int) -> None:
            body = fleet_step(rng, step, t0)
            api = apis[step % 2]  # both replicas take traffic
            for _ in range(50):
                response = client.post(f"{api.url}/v1/metrics", json=body)
                if response.status_code == 202:
                    acknowledged.update((s["node"], s["metric"], s["ts"]) for s in body["samples"])
                    return
                assert response.status_code == 503, response.text
                time.sleep(float(response.headers.get("Retry-After", "1")))
            raise AssertionError("ingest kept refusing")

        for step in range(STEPS_BEFORE_KILL):
            send(step)

        def checkpointed_by_w0() -> bool:
            # So the takeover restores a checkpoint and replays what came after it.
            with psycopg.connect(pg_url) as conn:
                rows = conn.execute(
                    "SELECT c.position FROM leases l JOIN checkpoints c USING (part)"
                    " WHERE l.worker = 'w0' AND c.worker = 'w0'"
                ).fetchall()
            return (bool(rows) and min(r[0] for r in rows) > 0) or None

        wait_until(
            checkpointed_by_w0,
            deadline_s=TAKEOVER_DEADLINE_S,
            what="a checkpoint of w0's partitions",
        )
        workers[0].kill()  # SIGKILL: no release, no last checkpoint
        for step in range(STEPS_BEFORE_KILL, STEPS_BEFORE_KILL + STEPS_AFTER_KILL):
            send(step)

        # Its partitions are served again: all owned, by the two survivors only.
        def taken_over() -> dict | None:
            status = owners()
            return status if status and "w0" not in status["workers"] else None

        status = wait_until(
            taken_over, deadline_s=TAKEOVER_DEADLINE_S, what="the dead worker's partitions"
        )
        assert set(status["workers"]) <= {"w1", "w2"}

        last_ts = t0 + (STEPS_BEFORE_KILL + STEPS_AFTER_KILL - 1) * STEP_S

        def all_scored() -> list | None:
            rows = client.get(f"{apis[1].url}/v1/risk", params={"top": 1000}).json()
            return rows if {r["node"] for r in rows if r["ts"] >= last_ts} == set(NODES) else None

        wait_until(
            all_scored,
            deadline_s=TAKEOVER_DEADLINE_S,
            what="every node scored up to its last sample",
        )

        store = store_for_url(pg_url)
        frame, in_log = store.samples_frame(), store.last_sample_rowid()
        store.close()
        stored = list(zip(frame["node"], frame["metric"], frame["ts"], strict=True))
        with psycopg.connect(pg_url) as conn:
            drains = conn.execute(
                "SELECT node, count(*) FROM actions WHERE action IN ('drain', 'failover')"
                " AND status <> 'blocked' GROUP BY node"
            ).fetchall()
            history = conn.execute(
                "SELECT count(*), count(DISTINCT (node, ts)) FROM risk"
            ).fetchone()
        assert set(stored) == acknowledged, "an acknowledged sample is missing"
        assert in_log == len(acknowledged), "a sample was stored twice (replays included)"
        assert history is not None and history[0] == history[1]
        drained = dict(drains)
        assert set(SHIFTED) <= set(drained), f"the shifted nodes were not drained: {drained}"
        assert max(drained.values()) == 1, f"a node was drained twice: {drained}"
    finally:
        for proc in processes:
            proc.kill()
