"""The webhook actuator against a real local HTTP server."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from predictor.actuators import (
    ActionRequest,
    ActuatorError,
    LogActuator,
    WebhookActuator,
    alertmanager_payload,
    make_actuator,
)
from predictor.config import Settings
from predictor.policy import Policy
from predictor.store import SQLiteStore
from tests.server_process import serving

TS = 1_764_115_200.0  # 2025-11-26T00:00:00Z


@dataclass
class Receiver:
    """A webhook receiver that records every request and answers ``status``."""

    url: str = ""
    status: int = 200
    delay_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)

    def bodies(self) -> list[dict[str, Any]]:
        return [r["json"] for r in self.requests]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            rec.requests.append(
                {"path": self.path, "headers": dict(self.headers), "json": json.loads(body)}
            )
            if rec.delay_s:
                time.sleep(rec.delay_s)
            self.send_response(rec.status)
            if 300 <= rec.status < 400:
                self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    with serving(Handler) as url:
        rec.url = f"{url}/hook"
        yield rec


def request(
    action: str = "drain", node: str = "web-1", ts: float = TS, **meta: Any
) -> ActionRequest:
    return ActionRequest(
        action=action,
        node=node,
        node_meta={"pool": "web", **meta},
        reason="risk 0.91 >= 0.8 for 60s (memory=0.90)",
        risk=0.9123,
        ts=ts,
        action_id=7,
    )


def parse_rfc3339(text: str) -> float:
    assert text.endswith("Z")
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_drain_posts_an_alertmanager_v4_firing_alert(receiver: Receiver) -> None:
    detail = WebhookActuator(receiver.url, timeout_s=2).apply(request("drain"))
    assert detail == "webhook 200"
    [req] = receiver.requests
    assert req["path"] == "/hook"
    assert req["headers"]["Content-Type"] == "application/json"
    body = req["json"]
    assert body["version"] == "4"
    assert body["status"] == "firing"
    assert isinstance(body["groupKey"], str) and "web-1" in body["groupKey"]
    assert body["receiver"] == "predictor"
    assert body["groupLabels"] == {"alertname": "PredictedNodeFailure", "node": "web-1"}
    assert body["truncatedAlerts"] == 0
    [alert] = body["alerts"]
    assert alert["status"] == "firing"
    assert alert["labels"] == {
        "alertname": "PredictedNodeFailure", "node": "web-1", "pool": "web",
        "severity": "warning",
    }  # fmt: skip
    assert alert["annotations"]["action"] == "drain"
    assert alert["annotations"]["description"] == request().reason
    assert alert["annotations"]["risk"] == "0.912"
    assert "drain web-1" in alert["annotations"]["summary"]
    assert parse_rfc3339(alert["startsAt"]) == TS
    assert alert["endsAt"] == "0001-01-01T00:00:00Z"  # what Alertmanager sends while firing
    assert len(alert["fingerprint"]) == 16 and int(alert["fingerprint"], 16) >= 0
    assert body["commonLabels"] == alert["labels"]


def test_undrain_resolves_the_same_alert(receiver: Receiver) -> None:
    actuator = WebhookActuator(receiver.url, timeout_s=2)
    actuator.apply(request("drain", ts=TS))
    actuator.apply(request("undrain", ts=TS + 1800.5))
    drain, undrain = receiver.bodies()
    assert undrain["status"] == "resolved"
    assert undrain["alerts"][0]["status"] == "resolved"
    assert parse_rfc3339(undrain["alerts"][0]["endsAt"]) == TS + 1800.5
    assert undrain["alerts"][0]["fingerprint"] == drain["alerts"][0]["fingerprint"]
    assert undrain["groupKey"] == drain["groupKey"]


def test_failover_is_resolved_by_the_undrain_of_the_node() -> None:
    failover = alertmanager_payload(request("failover", standby="web-9"))["alerts"][0]
    undrain = alertmanager_payload(request("undrain"))["alerts"][0]
    assert failover["annotations"]["action"] == "failover"
    assert failover["labels"] == undrain["labels"]
    assert failover["fingerprint"] == undrain["fingerprint"]


def test_fingerprint_differs_per_node_and_pool() -> None:
    prints = {
        alertmanager_payload(r)["alerts"][0]["fingerprint"]
        for r in (request(node="web-1"), request(node="web-2"), request(node="web-1", pool="db"))
    }
    assert len(prints) == 3


@pytest.mark.parametrize("status", [200, 202, 204])
def test_2xx_is_success(receiver: Receiver, status: int) -> None:
    receiver.status = status
    assert WebhookActuator(receiver.url).apply(request()) == f"webhook {status}"


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_retryable(receiver: Receiver, status: int) -> None:
    receiver.status = status
    with pytest.raises(ActuatorError, match=str(status)) as info:
        WebhookActuator(receiver.url).apply(request())
    assert info.value.final is False
    assert len(receiver.requests) == 1


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422])
def test_4xx_is_final(receiver: Receiver, status: int) -> None:
    receiver.status = status
    with pytest.raises(ActuatorError, match=str(status)) as info:
        WebhookActuator(receiver.url).apply(request())
    assert info.value.final is True


@pytest.mark.parametrize("status", [301, 302, 307])
def test_redirect_is_not_delivered(receiver: Receiver, status: int) -> None:
    # Redirects are not followed, so nothing reached a receiver: that is not success.
    receiver.status = status
    with pytest.raises(ActuatorError, match=str(status)) as info:
        WebhookActuator(receiver.url).apply(request())
    assert info.value.final is True


def test_unreachable_server_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port any more: connection refused.
    with pytest.raises(ActuatorError, match="unreachable") as info:
        WebhookActuator(f"http://127.0.0.1:{port}/hook", timeout_s=2).apply(request())
    assert info.value.final is False


def test_timeout_is_retryable(receiver: Receiver) -> None:
    receiver.delay_s = 1.0
    with pytest.raises(ActuatorError, match="timed out|unreachable") as info:
        WebhookActuator(receiver.url, timeout_s=0.1).apply(request())
    assert info.value.final is False


def test_make_actuator(tmp_path: Path) -> None:
    assert isinstance(make_actuator(Settings(db=tmp_path / "p.db")), LogActuator)
    hook = make_actuator(Settings(actuator="webhook", webhook_url="http://127.0.0.1:1/x"))
    assert isinstance(hook, WebhookActuator) and hook.url == "http://127.0.0.1:1/x"
    with pytest.raises(ValueError, match="WEBHOOK_URL"):
        make_actuator(Settings(actuator="webhook", webhook_url=None))


def test_policy_drain_and_undrain_through_the_webhook(receiver: Receiver, tmp_path: Path) -> None:
    settings = Settings(
        db=tmp_path / "p.db", dry_run=False, min_duration_s=0, recovery_s=60, cooldown_s=0,
        budget_max_nodes=5, budget_max_fraction=1.0,
    )  # fmt: skip
    store = SQLiteStore(settings.db)
    try:
        for n in ("web-1", "web-2", "web-3"):
            store.upsert_node(n, {"pool": "web"})
        policy = Policy(settings=settings, store=store, actuator=WebhookActuator(receiver.url))
        fresh = {"web-1": 0.0, "web-2": 0.0, "web-3": 0.0}

        def frame(ts: float, risk: float) -> pd.DataFrame:
            why = [[{"metric": "memory", "score": risk}]]
            return pd.DataFrame({"node": ["web-1"], "ts": [ts], "risk": [risk], "why": why})

        for ts, risk in [(0.0, 0.95), (10.0, 0.1), (70.0, 0.1)]:
            policy.decide(frame(ts, risk), node_last_ts=dict.fromkeys(fresh, ts),
                          node_risk={"web-1": risk})  # fmt: skip
        assert [a["status"] for a in store.actions()] == ["done", "done"]
        drain, undrain = (b["alerts"][0] for b in receiver.bodies())
        assert (drain["status"], undrain["status"]) == ("firing", "resolved")
        assert drain["annotations"]["action"] == "drain"
        assert undrain["annotations"]["action"] == "undrain"
        assert drain["labels"] == undrain["labels"]
        assert drain["fingerprint"] == undrain["fingerprint"]
    finally:
        store.close()
