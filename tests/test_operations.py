"""Operations: JSON log lines, and a graceful SIGTERM that leaves a complete checkpoint."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import httpx
import joblib
import pytest
from server_process import DEV_AUTH, ServerProcess

from predictor.logging_setup import JsonFormatter
from predictor.store import SQLiteStore

T0 = 1_764_115_200.0


def test_json_formatter_keeps_extras_and_exceptions() -> None:
    logger = logging.getLogger("predictor.test")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logger.makeRecord(
            logger.name, logging.ERROR, __file__, 1, "scored %d rows", (7,), sys.exc_info(),
            extra={"node": "web-1", "lag": 3, "odd": object()},
        )  # fmt: skip
    line = JsonFormatter().format(record)
    assert "\n" not in line  # one record, one line, even with a traceback
    entry = json.loads(line)
    assert entry["level"] == "ERROR" and entry["logger"] == "predictor.test"
    assert entry["message"] == "scored 7 rows"
    assert entry["node"] == "web-1" and entry["lag"] == 3 and "object" in entry["odd"]
    assert "ValueError: boom" in entry["exc_info"]
    assert entry["ts"].endswith("+00:00")
    assert "args" not in entry and "msg" not in entry  # record internals are not extras


@pytest.mark.integration
def test_sigterm_checkpoints_every_stored_sample_and_logs_json(tmp_path: Path) -> None:
    state = tmp_path / "state.joblib"
    server = ServerProcess(
        tmp_path,
        db=tmp_path / "ops.db",
        env={
            "PREDICTOR_LOG_JSON": "true",
            "PREDICTOR_STATE_PATH": str(state),
            # No periodic checkpoint during the test: the one found must come from shutdown.
            "PREDICTOR_CHECKPOINT_EVERY_S": "3600",
        },
    )
    server.start()
    with httpx.Client(base_url=server.url, headers=DEV_AUTH, timeout=30) as http:
        for k in range(30):
            samples = [
                {"node": f"n{n}", "metric": "cpu", "ts": T0 + 10 * k, "value": 0.1 * n}
                for n in range(20)
            ]
            assert http.post("/v1/metrics", json={"samples": samples}).status_code == 202
    assert not state.exists()
    server.terminate()  # straight after the last 202: the scorer may still be behind

    store = SQLiteStore(server.db)
    stored = (store.count_samples(), store.last_sample_rowid())
    store.close()
    assert stored == (600, 600)
    assert joblib.load(state)["engine"].scored_rowid == 600

    lines = [line for line in server.log.read_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "message"} <= set(e) for e in entries)
    serving = [e for e in entries if e["logger"] == "predictor.cli"]
    assert serving and serving[0]["port"] == server.port  # extras become fields
