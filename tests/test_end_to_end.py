"""End to end: simulate -> stream over real HTTP -> score -> the policy drains before failure."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from predictor.api import create_app
from predictor.config import Settings
from predictor.evaluation.fleet import drain_decisions, score_drains
from predictor.simulate import FleetSpec, simulate, stream_to_api
from predictor.training import train_and_register

pytestmark = [pytest.mark.integration, pytest.mark.slow]
STEP = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Settings]]:
    root: Path = tmp_path_factory.mktemp("e2e")
    settings = Settings(
        db=root / "predictor.db", models_dir=root / "models", port=free_port(), eval_step_s=STEP,
    )  # fmt: skip
    # The model learns from one fleet; the service then watches a different one.
    history = simulate(FleetSpec(nodes=60, duration_s=4 * 86400, step_s=STEP, seed=101))
    report = train_and_register(samples=history.samples, events=history.events, settings=settings)
    assert report["promoted"]
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=settings.port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{settings.port}", settings
    server.should_exit = True
    thread.join(timeout=30)


def test_precursor_failures_are_drained_first_and_healthy_nodes_are_not(served) -> None:
    base_url, settings = served
    spec = FleetSpec(
        nodes=10, duration_s=1.5 * 86400, step_s=STEP, seed=202, failure_rate_per_node_day=0.4,
        modes=("disk_fill", "thermal", "sudden_crash"),
    )  # fmt: skip
    stats = stream_to_api(spec, base_url=base_url, api_key=settings.dev_api_key)
    fleet = simulate(spec)
    assert stats.samples == len(fleet.samples)
    auth = {"Authorization": f"Bearer {settings.dev_api_key}"}
    with httpx.Client(base_url=base_url, timeout=30, headers=auth) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").json()["scoring_lag_rows"] > 0:
            assert time.monotonic() < deadline, "scorer never caught up"
            time.sleep(0.2)
        actions = client.get("/v1/actions", params={"limit": 10_000}).json()
        risk = client.get("/v1/risk", params={"top": 100}).json()
    import pandas as pd

    drains = drain_decisions(pd.DataFrame(actions))
    result = score_drains(drains=drains, events=fleet.events, samples=fleet.samples)
    precursor = fleet.events[
        (fleet.events["kind"] == "failure") & fleet.events["precursor_start_ts"].notna()
    ]
    assert len(precursor) >= 2, "the fleet must inject failures with precursors"
    caught = sum(
        result["per_mode"][m]["recall"] * result["per_mode"][m]["failures"]
        for m in ("disk_fill", "thermal")
        if m in result["per_mode"]
    )
    assert caught >= 1, result
    assert result["false_drains"] == 0, (result, drains)
    assert {r["node"] for r in risk} == set(fleet.samples["node"])
    for a in actions:
        assert a["dry_run"] and not a["executed"]  # dry-run is the default
