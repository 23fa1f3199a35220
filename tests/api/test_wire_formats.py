"""remote_write, OTLP and /metrics through the app, over a real SQLite store."""

from __future__ import annotations

import time

import cramjam
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from predictor.api import create_app
from predictor.config import Settings
from predictor.ingest.remote_write import STALE_NAN, Label, Sample, TimeSeries, WriteRequest
from predictor.service import Runtime

REMOTE_WRITE_HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}


@pytest.fixture
def client(settings: Settings):
    with TestClient(create_app(settings)) as c:
        yield c


def write_request(node: str, metric: str, points: list[tuple[float, float]]) -> bytes:
    series = TimeSeries(
        labels=[Label(name="__name__", value=metric), Label(name="instance", value=node)],
        samples=[Sample(timestamp=int(ts * 1000), value=v) for ts, v in points],
    )
    return bytes(cramjam.snappy.compress_raw(WriteRequest(timeseries=[series]).SerializeToString()))


def wait_scored(runtime: Runtime, node: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node in runtime.scorer.latest:
            return runtime.scorer.latest[node]
        time.sleep(0.05)
    raise AssertionError(f"{node} was never scored")


def scrape(client: TestClient, headers: dict[str, str]) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def test_remote_write_stores_samples_and_answers_204(client: TestClient, dev_auth) -> None:
    runtime: Runtime = client.app.state.runtime
    now = time.time()
    body = write_request("web-1:9100", "node_load1", [(now - 2, 0.5), (now - 1, STALE_NAN)])
    r = client.post("/api/v1/write", content=body, headers={**REMOTE_WRITE_HEADERS, **dev_auth})
    assert r.status_code == 204 and r.content == b""
    stored = runtime.store.samples_frame()
    assert stored[["node", "metric", "value"]].values.tolist() == [
        ["web-1:9100", "node_load1", 0.5]
    ]
    assert 0.0 <= wait_scored(runtime, "web-1:9100")["risk"] <= 1.0


def test_remote_write_errors(client: TestClient, settings: Settings, dev_auth) -> None:
    runtime: Runtime = client.app.state.runtime
    headers = {**REMOTE_WRITE_HEADERS, **dev_auth}
    body = write_request("a", "cpu", [(time.time(), 1.0)])
    assert (
        client.post("/api/v1/write", content=body, headers=REMOTE_WRITE_HEADERS).status_code == 401
    )
    assert client.post("/api/v1/write", content=b"garbage", headers=headers).status_code == 400
    v2 = {**headers, "Content-Type": "application/x-protobuf;proto=io.prometheus.write.v2.Request"}
    assert client.post("/api/v1/write", content=body, headers=v2).status_code == 415
    gz = {**headers, "Content-Encoding": "gzip"}
    assert client.post("/api/v1/write", content=body, headers=gz).status_code == 415
    assert runtime.store.count_samples() == 0


def test_remote_write_overload_is_503_with_retry_after(settings: Settings, dev_auth) -> None:
    full = settings.model_copy(update={"max_unscored_rows": -1})  # always "too far behind"
    with TestClient(create_app(full)) as c:
        body = write_request("a", "cpu", [(time.time(), 1.0)])
        r = c.post("/api/v1/write", content=body, headers={**REMOTE_WRITE_HEADERS, **dev_auth})
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
        assert c.app.state.runtime.store.count_samples() == 0


def otlp_doc(node: str, value: float) -> dict:
    return {
        "resourceMetrics": [
            {
                "resource": {"attributes": [{"key": "host.name", "value": {"stringValue": node}}]},
                "scopeMetrics": [
                    {
                        "metrics": [
                            {
                                "name": "system.cpu.utilization",
                                "gauge": {
                                    "dataPoints": [
                                        {"asDouble": value, "timeUnixNano": str(time.time_ns())}
                                    ]
                                },
                            }
                        ]
                    }
                ],
            }
        ]
    }


def test_otlp_json_is_answered_in_json_and_stored(client: TestClient, dev_auth) -> None:
    runtime: Runtime = client.app.state.runtime
    r = client.post("/v1/otlp/metrics", json=otlp_doc("db-1", 0.3), headers=dev_auth)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.json() == {}  # no partialSuccess: everything was taken
    assert runtime.store.samples_frame()[["node", "value"]].values.tolist() == [["db-1", 0.3]]
    assert 0.0 <= wait_scored(runtime, "db-1")["risk"] <= 1.0


def test_otlp_errors(client: TestClient, dev_auth) -> None:
    url = "/v1/otlp/metrics"
    assert client.post(url, json=otlp_doc("a", 1.0)).status_code == 401
    bad = {**dev_auth, "Content-Type": "application/x-protobuf"}
    assert client.post(url, content=b"\xff\xff\xff", headers=bad).status_code == 400
    plain = {**dev_auth, "Content-Type": "text/plain"}
    assert client.post(url, content=b"cpu 1", headers=plain).status_code == 415


def test_metrics_needs_read_scope_unless_public(settings: Settings, dev_auth) -> None:
    with TestClient(create_app(settings)) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=dev_auth).status_code == 200
    public = settings.model_copy(update={"metrics_public": True})
    with TestClient(create_app(public)) as c:
        assert c.get("/metrics").status_code == 200


def test_metrics_expose_ingest_lag_model_actions_and_node_risk(
    client: TestClient, dev_auth
) -> None:
    runtime: Runtime = client.app.state.runtime
    for node in ("web-1", "web-2", "web-3", "web-4"):
        assert client.put(f"/v1/nodes/{node}", json={"pool": "web"}, headers=dev_auth).is_success
    now = time.time()
    samples = [
        {"node": "web-1", "metric": "cpu", "ts": now - 60 + i, "value": 0.5} for i in range(5)
    ]
    assert (
        client.post("/v1/metrics", json={"samples": samples}, headers=dev_auth).status_code == 202
    )
    assert client.post("/v1/metrics", content=b"{bad", headers=dev_auth).status_code == 400
    rw = write_request("web-2", "cpu", [(now, 0.25)])
    rw_headers = {**REMOTE_WRITE_HEADERS, **dev_auth}
    assert client.post("/api/v1/write", content=rw, headers=rw_headers).status_code == 204
    wait_scored(runtime, "web-1")
    wait_scored(runtime, "web-2")

    # An audit-log entry, made the way the scorer makes them.
    rows = [("web-3", t, 0.95) for t in range(0, 180, 10)]
    risk = pd.DataFrame(
        {
            "node": [r[0] for r in rows],
            "ts": [float(r[1]) for r in rows],
            "risk": [r[2] for r in rows],
            "why": [[{"metric": "cpu", "score": 0.9}] for _ in rows],
        }
    )
    fresh = dict.fromkeys(("web-1", "web-2", "web-3", "web-4"), 170.0)
    with runtime.scorer.lock:
        actions = runtime.scorer.policy.decide(
            risk, node_last_ts=fresh, node_risk={"web-3": 0.95, "web-1": 0.1, "web-2": 0.1}
        )
    assert actions

    got = scrape(client, dev_auth)
    assert got[("predictor_ingested_samples_total", (("format", "json"),))] == 5.0
    assert got[("predictor_ingested_samples_total", (("format", "remote_write"),))] == 1.0
    assert got[("predictor_ingest_requests_total", (("code", "202"), ("format", "json")))] == 1.0
    assert got[("predictor_ingest_requests_total", (("code", "400"), ("format", "json")))] == 1.0
    rw_key = ("predictor_ingest_requests_total", (("code", "204"), ("format", "remote_write")))
    assert got[rw_key] == 1.0
    for node in ("web-1", "web-2"):
        value = got[("predictor_node_risk", (("node", node), ("pool", "web")))]
        assert value == pytest.approx(runtime.scorer.latest[node]["risk"])
    assert got[("predictor_scoring_lag_rows", ())] >= 0
    assert got[("predictor_scoring_lag_seconds", ())] >= 0
    assert got[("predictor_scored_until_timestamp_seconds", ())] == pytest.approx(now, abs=120)
    assert got[("predictor_model_info", (("version", "none"),))] == 1.0
    for action in actions:
        key = (("action", action["action"]), ("status", action["status"]))
        assert got[("predictor_actions_total", key)] >= 1.0


def test_each_app_has_its_own_registry(settings: Settings, tmp_path, dev_auth) -> None:
    other = settings.model_copy(update={"db": tmp_path / "other.db"})
    with TestClient(create_app(settings)) as a, TestClient(create_app(other)) as b:
        body = {"node": "n", "ts": time.time(), "values": {"cpu": 1.0}}
        assert a.post("/v1/metrics", json=body, headers=dev_auth).status_code == 202
        key = ("predictor_ingested_samples_total", (("format", "json"),))
        assert scrape(a, dev_auth)[key] == 1.0
        assert key not in scrape(b, dev_auth)
