"""The real Alertmanager delivers webhooks that the service stores as failure/recovery events."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from predictor.api import create_app
from predictor.config import Settings
from predictor.service import Runtime
from tests.server_process import stop_process

pytestmark = pytest.mark.integration
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
DEADLINE_S = 90.0  # generous: the machine is shared; a broken pipeline fails, never hangs

# Short intervals so a group is flushed (and re-sent: repeat <= group interval) every second.
CONFIG = """
route:
  receiver: predictor
  group_by: [alertname, instance]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1s
receivers:
  - name: predictor
    webhook_configs:
      - url: {url}
        send_resolved: true
        http_config:
          authorization: {{credentials: {key}}}
"""


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def webhook_notifications(client: httpx.Client) -> float:
    """How many webhook notifications Alertmanager has sent, from its own /metrics."""
    response = client.get("/metrics")
    response.raise_for_status()
    for family in text_string_to_metric_families(response.text):
        if family.name == "alertmanager_notifications":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels.get("integration") == "webhook":
                    return float(sample.value)
    return 0.0


@pytest.mark.skipif(
    ALERTMANAGER is None, reason="no alertmanager (apt-get install prometheus-alertmanager)"
)
def test_real_alertmanager_webhooks_become_failure_and_recovery_events(
    tmp_path: Path,
    settings: Settings,
    serve: Callable,
    free_port: Callable[[], int],
    wait_until: Callable[..., Any],
) -> None:
    app = create_app(settings)
    with serve(app) as base_url:
        runtime: Runtime = app.state.runtime
        config = tmp_path / "alertmanager.yml"
        config.write_text(
            CONFIG.format(url=f"{base_url}/v1/alertmanager", key=settings.dev_api_key)
        )
        am_port = free_port()
        log = tmp_path / "alertmanager.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    str(ALERTMANAGER),
                    f"--config.file={config}",
                    f"--storage.path={tmp_path / 'am-data'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",  # a single instance: no gossip
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            am = httpx.Client(base_url=f"http://127.0.0.1:{am_port}", timeout=10)

            def ready() -> bool:
                try:
                    return am.get("/-/ready").status_code == 200
                except httpx.TransportError:
                    return proc.poll() is not None  # it exited: stop waiting, fail below

            wait_until(ready, what="alertmanager to be ready", log=log, deadline_s=DEADLINE_S)
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]

            started = datetime.now(UTC)
            alert = {
                "labels": {"alertname": "NodeDown", "instance": "web-1"},
                "annotations": {"summary": "web-1 is unreachable"},
                "startsAt": rfc3339(started),
            }
            am.post("/api/v2/alerts", json=[alert]).raise_for_status()

            def events_of(kind: str) -> Any:
                frame = runtime.store.events_frame()
                rows = frame[(frame.node == "web-1") & (frame.kind == kind)]
                return rows if len(rows) else None

            failures = wait_until(
                lambda: events_of("failure"),
                what="a failure event for web-1",
                log=log,
                deadline_s=DEADLINE_S,
            )
            assert abs(failures.ts.iloc[0] - started.timestamp()) < 1.0
            assert "NodeDown" in failures.reason.iloc[0]

            # Alertmanager re-sends the still-firing alert; the service must not store it twice.
            first_sent = webhook_notifications(am)
            wait_until(
                lambda: webhook_notifications(am) > first_sent,
                what="alertmanager to re-send the firing alert",
                log=log,
                deadline_s=DEADLINE_S,
            )
            assert len(events_of("failure")) == 1

            ended = datetime.now(UTC) - timedelta(seconds=1)
            resolved = {**alert, "endsAt": rfc3339(ended)}
            am.post("/api/v2/alerts", json=[resolved]).raise_for_status()
            recoveries = wait_until(
                lambda: events_of("recovery"),
                what="a recovery event for web-1",
                log=log,
                deadline_s=DEADLINE_S,
            )
            assert len(recoveries) == 1
            assert recoveries.ts.iloc[0] >= failures.ts.iloc[0]
            assert len(events_of("failure")) == 1
            am.close()
        finally:
            stop_process(proc)
