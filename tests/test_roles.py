"""One machine, two cores: `--role api` commits to SQLite, a `--role scorer` process follows."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from predictor.config import Settings
from predictor.store import SQLiteStore
from tests.server_process import DEV_AUTH, ServerProcess

pytestmark = [pytest.mark.integration]
NODES = [f"n{i}" for i in range(6)]


@pytest.mark.parametrize("api_workers", [1, 2])
def test_api_process_and_scorer_process_share_one_store(tmp_path: Path, api_workers: int) -> None:
    db = tmp_path / "shared.db"
    env = {"PREDICTOR_CHECKPOINT_EVERY_S": "1"}
    api_env = {**env, "PREDICTOR_API_WORKERS": str(api_workers)}
    api = ServerProcess(tmp_path, db=db, env=api_env, role="api", name="api")
    scorer = ServerProcess(tmp_path, db=db, env=env, role="scorer", name="scorer")
    t0 = time.time() - 600
    try:
        api.start()
        scorer.start()
        with httpx.Client(base_url=api.url, headers=DEV_AUTH, timeout=30) as client:
            for step in range(20):
                body = [{"node": n, "ts": t0 + 10 * step, "values": {"cpu": 0.5, "mem": 0.1 * i}}
                        for i, n in enumerate(NODES)]  # fmt: skip
                assert client.post("/v1/metrics", json=body).status_code == 202
            status = api.wait_scored(timeout_s=120)  # the scorer process's position
            assert status["role"] == "api" and status["scoring_lag_rows"] == 0
            rows = client.get("/v1/risk", params={"top": 100}).json()
            assert {r["node"] for r in rows} == set(NODES)
            assert all(r["ts"] >= t0 + 190 for r in rows)
            node = client.get(f"/v1/nodes/{NODES[0]}/risk").json()
            assert node["node"] == NODES[0]
        # uvicorn's workers are processes of their own, each with its own store connection.
        workers = [p for p in api.children() if _is_spawned_worker(p)]
        assert len(workers) == (api_workers if api_workers > 1 else 0)
        # Graceful: every worker flushes and exits (uvicorn then re-raises the SIGTERM).
        assert api.terminate() in (0, -signal.SIGTERM)
        assert scorer.terminate() == 0  # SIGTERM: scores the rest, checkpoints, exits
    finally:
        api.kill()
        scorer.kill()
    store = SQLiteStore(db)
    try:
        assert store.last_sample_rowid() == 20 * len(NODES) * 2
        assert int(store.get_meta("scored_position") or 0) == store.last_sample_rowid()
    finally:
        store.close()
    assert (tmp_path / "shared.state.joblib").exists()


def _is_spawned_worker(pid: int) -> bool:
    """A multiprocessing child (uvicorn's workers), not its resource tracker."""
    return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()


def test_several_api_workers_need_the_api_role() -> None:
    with pytest.raises(ValueError, match="api_workers > 1 needs role 'api'"):
        Settings(api_workers=2)  # role "all": the scorer lives in the API process
    assert Settings(api_workers=2, role="api").api_workers == 2
