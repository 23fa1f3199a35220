"""OTLP/HTTP metrics (``ExportMetricsServiceRequest``) -> validated columnar batches.

Both encodings of OTLP/HTTP are read: binary protobuf (``application/x-protobuf``) and
the OTLP JSON mapping (``application/json``: lowerCamelCase keys, 64-bit integers as
strings or numbers, unknown fields ignored), optionally gzip- or deflate-compressed.

Mapping: the first resource attribute of ``node_attributes`` that is set (by default
``service.instance.id``, then ``host.name``) names the node; the metric's name is the
metric; each gauge or sum data point (``asDouble`` or ``asInt``) is a sample at
``timeUnixNano`` / 1e9 seconds. Data point attributes are dropped, as a
:class:`SampleBatch` has no place for them.

Skipped and counted, reported back in the answer's ``partialSuccess`` rather than failing
the request (the OTLP way for data the receiver will not take): histogram, exponential
histogram and summary points (``unsupported_type``: a distribution is not one value per
time), points flagged "no recorded value" or without a value (``no_value``), NaN and
+-Inf (``non_finite``), points without a timestamp (``no_timestamp``) or outside the
accepted window (``out_of_window``), resources without a node attribute (``no_node``)
and names outside the JSON API's name pattern (``bad_name``). A body that cannot be
decoded is 400.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import DataPointFlags

from predictor.ingest.batch import SampleBatch
from predictor.ingest.json_format import NAME_PATTERN, IngestError, Limits

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
NO_RECORDED_VALUE = DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
DEFAULT_NODE_ATTRIBUTES = ("service.instance.id", "host.name")


@dataclass
class OtlpResult:
    """The samples kept and, by reason, how many data points were skipped."""

    batch: SampleBatch
    skipped: Counter[str] = field(default_factory=Counter)

    def response(self, content_type: str) -> bytes:
        """The ``ExportMetricsServiceResponse`` body, in the request's encoding."""
        answer = ExportMetricsServiceResponse()
        if self.skipped:
            answer.partial_success.rejected_data_points = sum(self.skipped.values())
            answer.partial_success.error_message = "skipped: " + ", ".join(
                f"{reason}={count}" for reason, count in sorted(self.skipped.items())
            )
        if content_type == JSON:
            return json_format.MessageToJson(answer, indent=None).encode()
        return answer.SerializeToString()


def media_type(content_type: str | None) -> str:
    """The bare media type of a Content-Type header; 415 unless OTLP speaks it."""
    bare = (content_type or "").split(";")[0].strip().lower()
    if bare not in (PROTOBUF, JSON):
        raise IngestError([{"error": f"Content-Type must be {PROTOBUF} or {JSON}"}], 415)
    return bare


def decode_content(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """Undo ``Content-Encoding`` gzip or deflate (bounded by ``max_bytes``); else 415."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise IngestError([{"error": f"Content-Encoding {encoding!r} is not supported"}], 415)
    inflater = zlib.decompressobj(wbits=32 + zlib.MAX_WBITS)  # +32: gzip or zlib header
    try:
        out = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise IngestError([{"error": f"body is not {encoding}: {exc}"}], 400) from None
    if len(out) > max_bytes:
        raise IngestError([{"error": f"decompressed body larger than {max_bytes} bytes"}], 413)
    return out


def _node_of(attributes: list[KeyValue], node_attributes: tuple[str, ...]) -> str | None:
    found = {kv.key: kv.value for kv in attributes}
    for key in node_attributes:
        value = found.get(key)
        if value is None:
            continue
        kind = value.WhichOneof("value")
        # host.name and service.instance.id are strings; an integer id is taken as text.
        if kind == "string_value" and value.string_value:
            return value.string_value
        if kind == "int_value":
            return str(value.int_value)
    return None


def parse_otlp_metrics(
    body: bytes,
    content_type: str,
    limits: Limits,
    *,
    node_attributes: tuple[str, ...] = DEFAULT_NODE_ATTRIBUTES,
) -> OtlpResult:
    """Decode an ``ExportMetricsServiceRequest`` (protobuf or JSON) into a batch.

    >>> doc = {"resourceMetrics": [{"resource": {"attributes": [
    ...     {"key": "host.name", "value": {"stringValue": "web-1"}}]},
    ...   "scopeMetrics": [{"metrics": [{"name": "cpu", "gauge": {"dataPoints": [
    ...     {"asDouble": 0.5, "timeUnixNano": "1764115200000000000"}]}}]}]}]}
    >>> import json
    >>> result = parse_otlp_metrics(json.dumps(doc).encode(), JSON, Limits())
    >>> result.batch.node.tolist(), result.batch.metric.tolist(), result.batch.ts.tolist()
    (['web-1'], ['cpu'], [1764115200.0])
    """
    request = ExportMetricsServiceRequest()
    try:
        if content_type == JSON:
            json_format.Parse(body, request, ignore_unknown_fields=True)
        else:
            request.ParseFromString(body)
    except (DecodeError, json_format.ParseError, UnicodeDecodeError, RecursionError) as exc:
        error = f"body is not an OTLP ExportMetricsServiceRequest: {exc}"
        raise IngestError([{"error": error}], 400) from None

    skipped: Counter[str] = Counter()
    nodes: list[str] = []
    metrics: list[str] = []
    stamps_ns: list[int] = []
    values: list[float] = []
    for resource_metrics in request.resource_metrics:
        node = _node_of(list(resource_metrics.resource.attributes), node_attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                if kind not in ("gauge", "sum"):
                    if kind is not None:
                        skipped["unsupported_type"] += len(getattr(metric, kind).data_points)
                    continue
                points = getattr(metric, kind).data_points
                if node is None:
                    skipped["no_node"] += len(points)
                    continue
                if not (NAME_PATTERN.match(node) and NAME_PATTERN.match(metric.name)):
                    skipped["bad_name"] += len(points)
                    continue
                for point in points:
                    which = point.WhichOneof("value")
                    if which is None or point.flags & NO_RECORDED_VALUE:
                        skipped["no_value"] += 1
                        continue
                    if not point.time_unix_nano:
                        skipped["no_timestamp"] += 1
                        continue
                    nodes.append(node)
                    metrics.append(metric.name)
                    stamps_ns.append(point.time_unix_nano)
                    values.append(point.as_double if which == "as_double" else point.as_int)
            if len(values) > limits.max_samples:
                raise IngestError(
                    [{"error": f"too many samples: at most {limits.max_samples} per request"}],
                    status=413,
                )

    value = np.asarray(values, dtype=np.float64)
    ts = np.asarray(stamps_ns, dtype=np.uint64) / 1e9
    keep = np.isfinite(value)
    skipped["non_finite"] += int((~keep).sum())
    if limits.now:
        in_window = (ts >= limits.now - limits.max_age_s) & (
            ts <= limits.now + limits.future_tolerance_s
        )
        skipped["out_of_window"] += int((keep & ~in_window).sum())
        keep &= in_window
    batch = SampleBatch.from_columns(nodes, metrics, ts, value).take(np.flatnonzero(keep))
    return OtlpResult(batch=batch, skipped=+skipped)
