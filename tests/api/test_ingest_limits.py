"""Ingest concurrency limit: past ``max_inflight_ingest`` requests get 503 + Retry-After."""

from __future__ import annotations

from fastapi.testclient import TestClient

from predictor import service
from predictor.api import create_app
from predictor.config import Settings

HEADERS = {"Authorization": "Bearer dev"}
BODY = {"samples": [{"node": "a", "metric": "cpu", "ts": 1_764_115_200.0, "value": 0.5}]}


def test_requests_past_the_inflight_limit_get_503_with_retry_after(settings: Settings) -> None:
    limited = settings.model_copy(update={"max_inflight_ingest": 2})
    with TestClient(create_app(limited)) as client:
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        with service.ingest_slot(runtime=runtime), service.ingest_slot(runtime=runtime):
            refused = client.post("/v1/metrics", json=BODY, headers=HEADERS)
        accepted = client.post("/v1/metrics", json=BODY, headers=HEADERS)  # slots released
        assert runtime.store.count_samples() == 1
    assert refused.status_code == 503  # never 429: Prometheus drops 429s
    assert int(refused.headers["Retry-After"]) >= 1
    assert accepted.status_code == 202


def test_a_failed_request_gives_its_slot_back(settings: Settings) -> None:
    limited = settings.model_copy(update={"max_inflight_ingest": 1})
    with TestClient(create_app(limited)) as client:
        for _ in range(3):
            assert client.post("/v1/metrics", content=b"{", headers=HEADERS).status_code == 400
        assert client.post("/v1/metrics", json=BODY, headers=HEADERS).status_code == 202
