"""The real Prometheus scrapes a node and remote_writes into the running service."""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from predictor.api import create_app
from predictor.config import Settings
from predictor.service import Runtime
from tests.server_process import stop_process

pytestmark = pytest.mark.integration
PROMETHEUS = shutil.which("prometheus")
DEADLINE_S = 90.0  # generous: the machine is shared; a broken pipeline fails, never hangs

CONFIG = """
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: fleet
    static_configs:
      - targets: ["{target}"]
        labels: {{instance: web-1}}
  - job_name: predictor
    authorization: {{credentials: {key}}}
    static_configs:
      - targets: ["{service}"]
        labels: {{instance: predictor-self}}
remote_write:
  - url: http://{service}/api/v1/write
    authorization: {{credentials: {key}}}
    queue_config: {{batch_send_deadline: 1s, min_backoff: 100ms, max_backoff: 1s}}
"""


@pytest.fixture
def node_target() -> Iterator[tuple[str, Gauge, Any]]:
    """A node exporting one gauge, as any exporter would."""
    registry = CollectorRegistry()
    gauge = Gauge("fleet_temperature_celsius", "A node's temperature.", registry=registry)
    gauge.set(42.5)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    yield f"127.0.0.1:{server.server_port}", gauge, server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus binary (apt-get install prometheus)")
def test_remote_write_from_real_prometheus_is_stored_and_scored(
    tmp_path: Path,
    settings: Settings,
    serve: Callable,
    free_port: Callable[[], int],
    wait_until: Callable[..., Any],
    node_target: tuple[str, Gauge, Any],
) -> None:
    target, _gauge, target_server = node_target
    app = create_app(settings)
    with serve(app) as base_url:
        runtime: Runtime = app.state.runtime
        service = base_url.removeprefix("http://")
        config = tmp_path / "prometheus.yml"
        key = settings.dev_api_key
        config.write_text(CONFIG.format(target=target, service=service, key=key))
        log = tmp_path / "prometheus.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    str(PROMETHEUS),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{free_port()}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:

            def node_samples() -> Any:
                frame = runtime.store.samples_frame()
                rows = frame[
                    (frame.node == "web-1") & (frame.metric == "fleet_temperature_celsius")
                ]
                return rows if len(rows) >= 2 else None

            rows = wait_until(
                node_samples, what="web-1's samples in the store", log=log, deadline_s=DEADLINE_S
            )
            assert (rows.value == 42.5).all()
            # Milliseconds became seconds: the scrapes happened just now.
            assert (abs(rows.ts - time.time()) < 600).all()

            risk = wait_until(
                lambda: runtime.scorer.latest.get("web-1"),
                what="web-1's risk",
                log=log,
                deadline_s=DEADLINE_S,
            )
            assert 0.0 <= risk["risk"] <= 1.0

            # Prometheus scraped our own /metrics (up == 1 means it parsed the exposition).
            def self_scrape_up() -> bool:
                frame = runtime.store.samples_frame()
                up = frame[(frame.node == "predictor-self") & (frame.metric == "up")]
                return bool(len(up)) and up.value.iloc[-1] == 1.0

            wait_until(
                self_scrape_up,
                what="predictor's own scrape reported up",
                log=log,
                deadline_s=DEADLINE_S,
            )
            telemetry = runtime.telemetry.registry
            sent = telemetry.get_sample_value(
                "predictor_ingest_requests_total", {"format": "remote_write", "code": "204"}
            )
            assert sent and sent > 0

            # A target that goes away: Prometheus writes staleness markers for its series,
            # which the service must count as "series ended", never store as values.
            target_server.shutdown()
            target_server.server_close()

            def stale_seen() -> float | None:
                return telemetry.get_sample_value(
                    "predictor_ingest_skipped_samples_total",
                    {"format": "remote_write", "reason": "stale"},
                )

            assert (
                wait_until(stale_seen, what="staleness markers", log=log, deadline_s=DEADLINE_S) > 0
            )
            stored = runtime.store.samples_frame()
            assert all(math.isfinite(v) for v in stored.value)
        finally:
            stop_process(proc)
