"""POST actions as Alertmanager webhook (version 4) payloads."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import httpx

from predictor.actuators.base import ActionRequest, ActuatorError


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


def alertmanager_payload(request: ActionRequest, *, receiver: str = "predictor") -> dict:
    """The Alertmanager v4 webhook body for one action.

    An ``undrain`` resolves the node's alert (same fingerprint, ``status: resolved``).
    """
    # Alertmanager identifies an alert by its labels, so they name only the node: the
    # undrain then resolves whatever fired for it. The action goes in the annotations.
    labels = {
        "alertname": "PredictedNodeFailure",
        "node": request.node,
        "pool": str(request.node_meta.get("pool") or "default"),
        "severity": "warning",
    }
    fingerprint = hashlib.sha256(
        ("\x00".join(f"{k}={labels[k]}" for k in sorted(labels))).encode()
    ).hexdigest()[:16]
    resolved = request.action == "undrain"
    alert = {
        "status": "resolved" if resolved else "firing",
        "labels": labels,
        "annotations": {
            "action": request.action,
            "summary": f"predictor: {request.action} {request.node}",
            "description": request.reason,
            "risk": f"{request.risk:.3f}",
        },
        "startsAt": _rfc3339(request.ts),
        "endsAt": _rfc3339(request.ts) if resolved else "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "fingerprint": fingerprint,
    }
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="PredictedNodeFailure", node="{request.node}"}}',
        "truncatedAlerts": 0,
        "status": alert["status"],
        "receiver": receiver,
        "groupLabels": {"alertname": "PredictedNodeFailure", "node": request.node},
        "commonLabels": alert["labels"],
        "commonAnnotations": alert["annotations"],
        "externalURL": "",
        "alerts": [alert],
    }


class WebhookActuator:
    """Sends each action to ``url``; 5xx and network errors are retryable, 4xx are final."""

    name = "webhook"

    def __init__(self, url: str, *, timeout_s: float = 5.0, client: httpx.Client | None = None):
        self.url = url
        self.client = client or httpx.Client(timeout=timeout_s)

    def apply(self, request: ActionRequest) -> str:
        try:
            response = self.client.post(self.url, json=alertmanager_payload(request))
        except httpx.HTTPError as exc:
            raise ActuatorError(f"webhook unreachable: {exc}") from exc
        if response.status_code >= 500:
            raise ActuatorError(f"webhook answered {response.status_code}")
        if not response.is_success:  # 4xx, or a redirect (not followed: nothing delivered)
            raise ActuatorError(f"webhook refused: {response.status_code}", final=True)
        return f"webhook {response.status_code}"
