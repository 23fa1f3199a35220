"""OTLP/HTTP metrics bodies (protobuf and JSON) -> batches."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from predictor.ingest import IngestError, Limits
from predictor.ingest.otlp import (
    JSON,
    PROTOBUF,
    decode_content,
    media_type,
    parse_otlp_metrics,
)

T0_NS = 1_764_115_200_000_000_000


def attr(key: str, value: str) -> dict:
    return {"key": key, "value": {"stringValue": value}}


def export(resources: list[tuple[list[dict], list[dict]]]) -> dict:
    """An OTLP JSON document: (resource attributes, metrics) per resource."""
    return {
        "resourceMetrics": [
            {"resource": {"attributes": attrs}, "scopeMetrics": [{"metrics": metrics}]}
            for attrs, metrics in resources
        ]
    }


def gauge(name: str, *points: dict) -> dict:
    return {"name": name, "gauge": {"dataPoints": list(points)}}


DOC = export(
    [
        (
            [attr("host.name", "host-a"), attr("service.instance.id", "inst-a")],
            [
                gauge("cpu", {"asDouble": 0.5, "timeUnixNano": str(T0_NS)}),
                {
                    "name": "requests",
                    "sum": {
                        "aggregationTemporality": 2,
                        "isMonotonic": True,
                        "dataPoints": [{"asInt": "7", "timeUnixNano": str(T0_NS + 10**9)}],
                    },
                },
                {
                    "name": "latency",
                    "histogram": {"dataPoints": [{"count": "1", "timeUnixNano": str(T0_NS)}]},
                },
            ],
        ),
        ([attr("host.name", "host-b")], [gauge("cpu", {"asDouble": 0.25, "timeUnixNano": T0_NS})]),
        ([attr("service.name", "no-node")], [gauge("cpu", {"asDouble": 1, "timeUnixNano": T0_NS})]),
    ]
)


def as_protobuf(doc: dict) -> bytes:
    return json_format.ParseDict(doc, ExportMetricsServiceRequest()).SerializeToString()


@pytest.mark.parametrize("encoding", [JSON, PROTOBUF])
def test_gauges_and_sums_map_to_samples_in_both_encodings(encoding: str) -> None:
    raw = json.dumps(DOC).encode() if encoding == JSON else as_protobuf(DOC)
    result = parse_otlp_metrics(raw, encoding, Limits())
    b = result.batch
    # service.instance.id comes first in the default order, host.name after it.
    assert b.node.tolist() == ["inst-a", "inst-a", "host-b"]
    assert b.metric.tolist() == ["cpu", "requests", "cpu"]
    assert b.ts.tolist() == [T0_NS / 1e9, T0_NS / 1e9 + 1, T0_NS / 1e9]
    assert b.value.tolist() == [0.5, 7.0, 0.25]
    assert dict(result.skipped) == {"unsupported_type": 1, "no_node": 1}


def test_node_attribute_order_is_configurable() -> None:
    result = parse_otlp_metrics(
        json.dumps(DOC).encode(), JSON, Limits(), node_attributes=("host.name",)
    )
    assert result.batch.node.tolist() == ["host-a", "host-a", "host-b"]


def test_points_without_a_value_or_timestamp_or_finite_value_are_skipped() -> None:
    doc = export(
        [
            (
                [attr("host.name", "a")],
                [
                    gauge(
                        "cpu",
                        {"asDouble": 1.0, "timeUnixNano": T0_NS, "flags": 1},  # no recorded value
                        {"timeUnixNano": T0_NS},  # no value at all
                        {"asDouble": 2.0},  # no timestamp
                        {"asDouble": "NaN", "timeUnixNano": T0_NS},
                        {"asDouble": 3.0, "timeUnixNano": T0_NS},
                    )
                ],
            )
        ]
    )
    result = parse_otlp_metrics(json.dumps(doc).encode(), JSON, Limits())
    assert result.batch.value.tolist() == [3.0]
    assert dict(result.skipped) == {"no_value": 2, "no_timestamp": 1, "non_finite": 1}


def test_partial_success_reports_the_skipped_points_in_the_request_encoding() -> None:
    result = parse_otlp_metrics(json.dumps(DOC).encode(), JSON, Limits())
    answer = json.loads(result.response(JSON))
    assert answer["partialSuccess"]["rejectedDataPoints"] == "2"
    assert "no_node=1" in answer["partialSuccess"]["errorMessage"]
    parsed = ExportMetricsServiceResponse.FromString(result.response(PROTOBUF))
    assert parsed.partial_success.rejected_data_points == 2
    clean = parse_otlp_metrics(json.dumps(export([])).encode(), JSON, Limits())
    assert json.loads(clean.response(JSON)) == {}


@pytest.mark.parametrize(
    ("raw", "encoding"),
    [(b"{not json", JSON), (b'{"resourceMetrics": 3}', JSON), (b"\xff\xff\xff", PROTOBUF)],
)
def test_undecodable_bodies_are_400(raw: bytes, encoding: str) -> None:
    with pytest.raises(IngestError) as info:
        parse_otlp_metrics(raw, encoding, Limits())
    assert info.value.status == 400


def test_too_many_points_is_413() -> None:
    doc = export(
        [([attr("host.name", "a")], [gauge("cpu", *[{"asInt": 1, "timeUnixNano": T0_NS}] * 20)])]
    )
    with pytest.raises(IngestError) as info:
        parse_otlp_metrics(json.dumps(doc).encode(), JSON, Limits(max_samples=5))
    assert info.value.status == 413


def test_content_type_and_encoding() -> None:
    assert media_type("application/json; charset=utf-8") == JSON
    assert media_type("application/x-protobuf") == PROTOBUF
    with pytest.raises(IngestError) as info:
        media_type("text/plain")
    assert info.value.status == 415
    raw = b"x" * 1000
    assert decode_content(gzip.compress(raw), "gzip", 10_000) == raw
    assert decode_content(zlib.compress(raw), "deflate", 10_000) == raw
    assert decode_content(raw, None, 10_000) == raw
    cases = [
        (raw, "br", 10_000, 415),  # a coding OTLP does not use
        (raw, "gzip", 10_000, 400),  # says gzip, is not
        (gzip.compress(raw), "gzip", 999, 413),  # inflates past the limit
    ]
    for body, encoding, max_bytes, status in cases:
        with pytest.raises(IngestError) as info:
            decode_content(body, encoding, max_bytes)
        assert info.value.status == status
