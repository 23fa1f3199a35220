"""Alertmanager webhooks in: failure/recovery events, deduplicated on fingerprint."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from predictor.actuators import ActionRequest, alertmanager_payload
from predictor.api import create_app
from predictor.config import Settings


@pytest.fixture
def client(settings: Settings):
    with TestClient(create_app(settings)) as c:
        yield c


def payload(action: str, node: str = "web-1", ts: float = 1764115200.0) -> dict:
    """A real Alertmanager v4 body, as our own webhook actuator sends it."""
    request = ActionRequest(
        action=action, node=node, node_meta={"pool": "web"}, reason="disk full",
        risk=0.9, ts=ts, action_id=1,
    )  # fmt: skip
    return alertmanager_payload(request)


def test_firing_is_a_failure_resolved_a_recovery_and_resends_count_once(
    client: TestClient, dev_auth: dict[str, str]
) -> None:
    firing = payload("drain")
    assert client.post("/v1/alertmanager", json=firing, headers=dev_auth).json() == {"accepted": 1}
    # Alertmanager re-sends a firing alert on every repeat_interval: one event.
    assert client.post("/v1/alertmanager", json=firing, headers=dev_auth).json() == {"accepted": 0}
    resolved = payload("undrain", ts=1764118800.0)
    assert client.post("/v1/alertmanager", json=resolved, headers=dev_auth).json() == {
        "accepted": 1
    }
    events = client.app.state.runtime.store.events_frame()
    assert events["kind"].tolist() == ["failure", "recovery"]
    assert events["node"].tolist() == ["web-1", "web-1"]
    assert events["ts"].tolist() == [1764115200.0, 1764118800.0]
    assert events["reason"].iloc[0].startswith("alertmanager: PredictedNodeFailure")


def test_alert_without_a_node_label_is_skipped_and_bad_bodies_refused(
    client: TestClient, dev_auth: dict[str, str]
) -> None:
    body = payload("drain")
    body["alerts"][0]["labels"] = {"alertname": "Watchdog"}
    assert client.post("/v1/alertmanager", json=body, headers=dev_auth).json() == {"accepted": 0}
    wrong = {**payload("drain"), "version": "3"}
    assert client.post("/v1/alertmanager", json=wrong, headers=dev_auth).status_code == 422
    assert client.post("/v1/alertmanager", json=payload("drain")).status_code == 401
    assert client.app.state.runtime.store.events_frame().empty
