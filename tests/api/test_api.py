"""The HTTP API through FastAPI's test client, over a real SQLite store."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from predictor.api import create_app
from predictor.api.deps import get_runtime
from predictor.config import Settings
from predictor.service import Runtime


@pytest.fixture
def client(settings: Settings, dev_auth: dict[str, str]):
    with TestClient(create_app(settings), headers=dev_auth) as c:
        yield c


def wait_scored(client: TestClient, node: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(f"/v1/nodes/{node}/risk")
        if r.status_code == 200:
            return r.json()
        time.sleep(0.05)
    raise AssertionError(f"{node} was never scored")


def test_ingest_both_shapes_then_risk_and_history(client: TestClient) -> None:
    t0 = time.time() - 3600
    samples = [
        {"node": "web-1", "metric": "cpu", "ts": t0 + 60 * i, "value": 0.3} for i in range(30)
    ]
    r = client.post("/v1/metrics", json={"samples": samples})
    assert r.status_code == 202 and r.json() == {"accepted": 30}
    compact = {"node": "web-1", "ts": "2025-11-26T00:00:00Z", "values": {"mem": 0.5}}
    assert client.post("/v1/metrics", json=compact).json() == {"accepted": 1}
    risk = wait_scored(client, "web-1")
    assert 0.0 <= risk["risk"] <= 1.0 and risk["state"] == "active"
    assert client.get("/v1/risk", params={"top": 5}).json()[0]["node"] == "web-1"
    history = client.get("/v1/nodes/web-1/history", params={"since": t0}).json()
    assert len(history) >= 1 and all(h["ts"] >= t0 for h in history)


def test_bad_batch_is_422_naming_samples_and_stores_nothing(client: TestClient) -> None:
    runtime: Runtime = client.app.state.runtime
    good = {"node": "a", "metric": "cpu", "ts": time.time(), "value": 1.0}
    bad = {"node": "a", "metric": "cpu", "ts": time.time(), "value": "high"}
    r = client.post("/v1/metrics", json={"samples": [good, bad, good]})
    assert r.status_code == 422
    assert r.json()["detail"][0]["index"] == 1
    assert runtime.store.count_samples() == 0
    assert client.post("/v1/metrics", content=b"{not json").status_code == 400


def test_body_size_limit_is_413(settings: Settings, dev_auth: dict[str, str]) -> None:
    small = settings.model_copy(update={"max_body_bytes": 100})
    with TestClient(create_app(small), headers=dev_auth) as c:
        r = c.post("/v1/metrics", content=b"x" * 500, headers={"content-type": "application/json"})
        assert r.status_code == 413


def test_node_registry_round_trip_and_validation(client: TestClient) -> None:
    meta = {"pool": "web", "lb_backend": "be_web", "lb_server": "web1", "standby": "web-9"}
    assert client.put("/v1/nodes/web-1", json=meta).status_code == 200
    got = client.get("/v1/nodes/web-1").json()
    assert got["pool"] == "web" and got["standby"] == "web-9" and got["health_url"] is None
    assert client.get("/v1/nodes/nope").status_code == 404
    assert client.put("/v1/nodes/web-1", json={"pool": "web", "colour": "red"}).status_code == 422
    assert client.put("/v1/nodes/bad%20name", json={}).status_code == 422


def test_events_are_recorded_and_validated(client: TestClient) -> None:
    ev = {"node": "web-1", "ts": "2025-11-26T10:00:00Z", "kind": "failure", "reason": "OOM"}
    assert client.post("/v1/events", json={"events": [ev]}).json() == {"accepted": 1}
    stored = client.app.state.runtime.store.events_frame()
    assert stored["kind"].tolist() == ["failure"] and stored["ts"].iloc[0] == 1764151200.0
    wrong = {**ev, "kind": "exploded"}
    assert client.post("/v1/events", json={"events": [wrong]}).status_code == 422


def test_overload_is_503_with_retry_after(settings: Settings, dev_auth: dict[str, str]) -> None:
    tight = settings.model_copy(update={"max_unscored_rows": -1})
    with TestClient(create_app(tight), headers=dev_auth) as c:
        r = c.post(
            "/v1/metrics",
            json={"samples": [{"node": "a", "metric": "m", "ts": time.time(), "value": 1}]},
        )
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert c.app.state.runtime.store.count_samples() == 0


def test_undrain_of_an_active_node_is_409(client: TestClient) -> None:
    assert client.post("/v1/nodes/web-1/undrain", json={}).status_code == 409


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["store"] is True


def test_runtime_dependency_is_overridable(client: TestClient) -> None:
    """Routes take the runtime through a dependency, so tests can swap it."""

    class Broken:
        def __getattr__(self, name: str):
            raise RuntimeError("store down")

    client.app.dependency_overrides[get_runtime] = lambda: Broken()
    try:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False
    finally:
        client.app.dependency_overrides.clear()


def test_backpressure_reads_the_backlog_only_when_it_may_be_past_the_limit(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between readings the backlog is bounded by the last one plus the rows committed
    since; only a bound past the limit forces a reading, and a refusal rests on one."""
    from predictor import service
    from predictor.ingest import SampleBatch

    readings: list[int] = []

    def counted(*, runtime: Runtime) -> int:
        readings.append(real(runtime=runtime))
        return readings[-1]

    real = service.scoring_lag_rows
    monkeypatch.setattr(service, "scoring_lag_rows", counted)
    monkeypatch.setattr(service, "BACKLOG_RECHECK_S", 3600.0)  # no reading by age here
    # The api role without a scorer process: nothing is scored, the backlog only grows.
    api = settings.model_copy(update={"role": "api", "max_unscored_rows": 2_500})
    runtime = Runtime.build(api)
    try:
        now = time.time()
        for step in range(3):
            batch = SampleBatch.from_columns(
                ["a"] * 1000, [f"m{i}" for i in range(1000)], [now + step] * 1000, [1.0] * 1000
            )
            assert service.ingest_samples(runtime=runtime, batch=batch) == 1000
        assert readings == [0]  # the first request read it; 1000 and 2000 stay under 2500
        with pytest.raises(service.Overloaded):
            service.ingest_samples(runtime=runtime, batch=batch)
        assert readings == [0, 3000]  # 3000 may be past it: read, and it is
        assert runtime.store.count_samples() == 3000
    finally:
        runtime.store.close()
