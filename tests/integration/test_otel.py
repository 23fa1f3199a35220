"""The OpenTelemetry SDK's own OTLP/HTTP exporter sends to the running service."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from predictor.api import create_app
from predictor.config import Settings
from predictor.service import Runtime

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_sdk_exporter_samples_are_stored_and_scored(
    settings: Settings, serve: Callable, wait_until: Callable, compression: Compression
) -> None:
    app = create_app(settings)
    with serve(app) as base_url:
        runtime: Runtime = app.state.runtime
        exporter = OTLPMetricExporter(
            endpoint=f"{base_url}/v1/otlp/metrics",
            headers={"Authorization": f"Bearer {settings.dev_api_key}"},
            compression=compression,
            timeout=30,
        )
        # A long interval: the test decides when to export (force_flush), not a timer.
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
        provider = MeterProvider(
            resource=Resource.create({"service.instance.id": "otel-node-1"}),
            metric_readers=[reader],
        )
        meter = provider.get_meter("predictor-test")
        meter.create_counter("requests").add(5)
        meter.create_gauge("cpu.utilization").set(0.75)
        meter.create_histogram("latency").record(0.2)  # not one value: skipped, counted
        try:
            assert provider.force_flush(timeout_millis=30_000)
        finally:
            provider.shutdown()

        frame = runtime.store.samples_frame()
        got = dict(zip(frame.metric, frame.value, strict=True))
        assert set(frame.node) == {"otel-node-1"}
        assert got == {"requests": 5.0, "cpu.utilization": 0.75}
        risk = wait_until(lambda: runtime.scorer.latest.get("otel-node-1"), what="a risk score")
        assert 0.0 <= risk["risk"] <= 1.0
        skipped = runtime.telemetry.registry.get_sample_value(
            "predictor_ingest_skipped_samples_total",
            {"format": "otlp", "reason": "unsupported_type"},
        )
        # Every export (flush, then shutdown) carries one point of each instrument.
        exports = int((frame.metric == "requests").sum())
        assert exports >= 1 and skipped == exports and len(frame) == 2 * exports
