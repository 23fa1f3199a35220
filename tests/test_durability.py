"""Crash test: SIGKILL a real server mid-stream; nothing acknowledged is lost, risk resumes.

A client streams deterministic batches and records every one answered 202. The server
is killed with SIGKILL at random moments, restarted, and the client resends what was not
acknowledged, as a real client does. A batch committed whose 202 was lost is then stored
twice; the engine ignores samples whose timestamp is not after its series' last one, so
the duplicate changes no risk, and the store check is "every acknowledged sample is there".
"""

from __future__ import annotations

import random
import sqlite3
import threading
from pathlib import Path

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
from server_process import DEV_AUTH, ServerProcess

from predictor.config import Settings
from predictor.ingest import SampleBatch
from predictor.service import Runtime
from predictor.store import SQLiteStore

T0 = 1_764_115_200.0  # fixed event time: the reference run sees exactly the same stamps
STEP_S = 10.0
NODES = 4
METRICS = ("cpu", "mem")
STEPS_PER_BATCH = 2
MAX_BATCHES = 3000  # bounds the workload; a round is cut short by its kill long before
ROUNDS = 4


def batch_frame(index: int) -> pd.DataFrame:
    """Batch ``index``: a few event-time steps for every node, the same on every call."""
    rows = []
    for k in range(index * STEPS_PER_BATCH, (index + 1) * STEPS_PER_BATCH):
        rng = np.random.default_rng(k)
        for n in range(NODES):
            spike = 0.6 if (k % 53 == 0 and n == 1) else 0.0  # something to score high
            for j, metric in enumerate(METRICS):
                level = 0.3 + 0.1 * n + 0.05 * j + 0.05 * np.sin(k / 7 + n)
                rows.append((f"n{n}", metric, T0 + STEP_S * k, level + rng.normal(0, 0.01) + spike))
    return pd.DataFrame(rows, columns=["node", "metric", "ts", "value"])


def body(frame: pd.DataFrame) -> dict:
    return {"samples": frame.to_dict("records")}


class Client:
    """Sends batches in order; a batch counts as acknowledged only once 202 is read."""

    def __init__(self) -> None:
        self.next_batch = 0
        self.acked: list[int] = []
        self.first_ack = threading.Event()

    def send_one(self, url: str) -> None:
        r = httpx.post(f"{url}/v1/metrics", json=body(batch_frame(self.next_batch)),
                       headers=DEV_AUTH, timeout=30)  # fmt: skip
        assert r.status_code == 202, r.text
        self.acked.append(self.next_batch)
        self.next_batch += 1

    def stream(self, url: str) -> None:
        """Send until the server dies (or the workload ends); resume where it stopped."""
        self.first_ack.clear()
        with httpx.Client(base_url=url, headers=DEV_AUTH, timeout=30) as http:
            while self.next_batch < MAX_BATCHES:
                try:
                    r = http.post("/v1/metrics", json=body(batch_frame(self.next_batch)))
                except httpx.TransportError:
                    return  # killed: this batch is unacknowledged and will be resent
                if r.status_code == 503:  # backlog full: wait as told, then resend
                    threading.Event().wait(float(r.headers["Retry-After"]))
                    continue
                assert r.status_code == 202, r.text
                self.acked.append(self.next_batch)
                self.next_batch += 1
                self.first_ack.set()


def server_risk(server: ServerProcess) -> dict[str, float]:
    rows = httpx.get(f"{server.url}/v1/risk", params={"top": 100}, headers=DEV_AUTH).json()
    return {r["node"]: r["risk"] for r in rows}


@pytest.mark.integration
def test_sigkill_loses_nothing_acknowledged_and_risk_resumes(tmp_path: Path) -> None:
    db, state = tmp_path / "crash.db", tmp_path / "crash.state.joblib"
    server = ServerProcess(
        tmp_path,
        db=db,
        env={"PREDICTOR_CHECKPOINT_EVERY_S": "0.2", "PREDICTOR_STATE_PATH": str(state)},
    )
    client, chance = Client(), random.Random(20251126)
    checkpoint_positions = []
    for _ in range(ROUNDS):
        server.start()
        sender = threading.Thread(target=client.stream, args=(server.url,))
        sender.start()
        assert client.first_ack.wait(timeout=60), "no batch acknowledged in this round"
        threading.Event().wait(chance.uniform(0.2, 1.5))  # a random moment of the stream
        server.kill()
        sender.join(timeout=60)
        assert not sender.is_alive()
        if state.exists():
            checkpoint_positions.append(joblib.load(state)["engine"].scored_rowid)

    # Final restart: the online state comes back from the checkpoint plus a replay.
    server.start()
    try:
        client.send_one(server.url)  # the batch in flight at the last kill, resent
        status = server.wait_scored()
        assert status["scorer_alive"]
        got = server_risk(server)
    finally:
        assert server.terminate() in (0, -15)  # uvicorn re-raises SIGTERM after shutdown

    # Checkpoints were written between kills, and the restart restored one, not zero.
    assert checkpoint_positions and checkpoint_positions[-1] > 0
    assert "restored online state at sample" in server.log.read_text()

    acked = pd.concat([batch_frame(i) for i in client.acked], ignore_index=True)
    assert len(client.acked) >= ROUNDS  # every round acknowledged at least one batch

    # Every acknowledged sample is in the store: open the SQLite file the server left.
    store = SQLiteStore(db)
    stored, in_log = store.samples_frame(), store.last_sample_rowid()
    store.close()
    keys = ["node", "metric", "ts", "value"]
    present = acked.merge(stored, on=keys, how="left", indicator=True)
    missing = present[present["_merge"] != "both"]
    assert missing.empty, f"{len(missing)} acknowledged samples lost:\n{missing.head()}"
    # Unacknowledged batches were all resent, so the log holds nothing else, and ingest
    # is idempotent, so a batch committed before its 202 was lost is in the log once.
    assert in_log == len(stored) == len(acked)

    # The same acknowledged samples, in the same order, through a run that never crashed.
    reference = Runtime.build(
        Settings(db=tmp_path / "ref.db", models_dir=tmp_path / "models",
                 state_path=tmp_path / "ref.joblib")
    )  # fmt: skip
    for i in client.acked:
        reference.store.append_samples(SampleBatch.from_frame(batch_frame(i)))
    reference.scorer.drain_backlog()
    expected = {n: r["risk"] for n, r in reference.scorer.latest.items()}
    reference.store.close()
    assert set(got) == set(expected) == {f"n{n}" for n in range(NODES)}
    for node, risk in expected.items():
        assert got[node] == pytest.approx(risk, abs=2e-4), node  # the API rounds to 4 places
    print(
        f"durability: {ROUNDS} kill rounds, {len(client.acked)} batches / {len(acked)} samples"
        f" acknowledged and found, {len(stored) - len(stored.drop_duplicates())} duplicates"
        f" stored, checkpoints at samples {checkpoint_positions}"
    )


def test_store_commits_through_wal_with_full_sync(tmp_path: Path) -> None:
    """What the crash test relies on: a commit is atomic (WAL) and on disk (FULL) before 202."""
    runtime = Runtime.build(Settings(db=tmp_path / "p.db", models_dir=tmp_path / "models"))
    store = runtime.store
    for conn in (store._write, store._read):
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # 2 = FULL
    runtime.store.close()
    with sqlite3.connect(tmp_path / "p.db") as conn:  # WAL mode is kept in the file itself
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
