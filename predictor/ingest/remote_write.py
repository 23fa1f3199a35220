"""Prometheus remote_write 1.0 -> validated columnar batches.

The body is a protobuf ``prometheus.WriteRequest`` compressed with snappy's *block*
format (not the framed one)::

    WriteRequest { repeated TimeSeries timeseries = 1; }
    TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
    Label        { string name = 1; string value = 2; }
    Sample       { double value = 1; int64 timestamp = 2; }   // timestamp in ms

The messages are built from a descriptor at import time (the subset of Prometheus'
``prompb/remote.proto`` and ``types.proto`` above, same field numbers; unknown fields such
as exemplars, histograms and metadata are skipped by the protobuf runtime), so there is
no generated module to keep in step with the protobuf runtime.

Mapping: the node label (``remote_write_node_label``, default ``instance``) names the
node, ``__name__`` the metric; other labels are dropped, since a :class:`SampleBatch` has
no place for them (nor does the JSON path keep them).

What is rejected and what is skipped: a body that is not snappy or not a WriteRequest is
400 (Prometheus drops a batch answered with 4xx and does not retry it). Anything about one
series or one sample is *skipped and counted* instead, never a reason to reject the whole
batch, because a 400 would throw away every good sample of the batch with it:

- ``stale``: Prometheus' staleness marker (the NaN with bits ``0x7ff0000000000002``),
  which says "this series ended", not a value;
- ``non_finite``: other NaN and +-Inf (a summary quantile with no observations is NaN,
  so these arrive in normal operation and must not fail the batch);
- ``no_node``: a series without the node label, e.g. a recording rule that aggregated
  ``instance`` away; it belongs to no node;
- ``bad_name``: a node or metric name outside the JSON API's name pattern;
- ``out_of_window``: a timestamp too far in the future or past.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import cramjam
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from predictor.ingest.batch import SampleBatch
from predictor.ingest.json_format import NAME_PATTERN, IngestError, Limits

STALE_NAN_BITS = 0x7FF0000000000002
STALE_NAN = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]


def _message_classes() -> tuple[Any, ...]:
    """WriteRequest, TimeSeries, Label and Sample classes from a hand-written descriptor."""
    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="predictor/prometheus_remote.proto", package="prometheus", syntax="proto3"
    )

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        msg = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            added = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:  # only message fields name a type
                added.type_name = type_name

    one, many = f.LABEL_OPTIONAL, f.LABEL_REPEATED
    message("Label", ("name", 1, f.TYPE_STRING, one, ""), ("value", 2, f.TYPE_STRING, one, ""))
    message("Sample", ("value", 1, f.TYPE_DOUBLE, one, ""), ("timestamp", 2, f.TYPE_INT64, one, ""))
    message(
        "TimeSeries",
        ("labels", 1, f.TYPE_MESSAGE, many, ".prometheus.Label"),
        ("samples", 2, f.TYPE_MESSAGE, many, ".prometheus.Sample"),
    )
    message("WriteRequest", ("timeseries", 1, f.TYPE_MESSAGE, many, ".prometheus.TimeSeries"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return tuple(
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"prometheus.{name}"))
        for name in ("WriteRequest", "TimeSeries", "Label", "Sample")
    )


WriteRequest, TimeSeries, Label, Sample = _message_classes()


@dataclass
class RemoteWriteResult:
    """The samples kept and, by reason, how many were skipped."""

    batch: SampleBatch
    skipped: Counter[str] = field(default_factory=Counter)


def snappy_decompress(body: bytes, max_bytes: int) -> bytes:
    """Undo snappy block compression; 400 if it is not snappy, 413 past ``max_bytes``."""
    try:
        # The block header declares the decompressed size: refuse a bomb before allocating.
        size = cramjam.snappy.decompress_raw_len(body)
        if size > max_bytes:
            raise IngestError([{"error": f"decompressed body larger than {max_bytes} bytes"}], 413)
        return bytes(cramjam.snappy.decompress_raw(body))
    except cramjam.DecompressionError as exc:
        raise IngestError([{"error": f"body is not snappy block-compressed: {exc}"}], 400) from None


def parse_remote_write(
    body: bytes, limits: Limits, *, node_label: str = "instance", max_bytes: int = 1 << 26
) -> RemoteWriteResult:
    """Decode a snappy-compressed ``WriteRequest`` into a batch (timestamps ms -> s).

    >>> req = WriteRequest(timeseries=[TimeSeries(
    ...     labels=[Label(name="__name__", value="up"), Label(name="instance", value="web-1")],
    ...     samples=[Sample(value=1.0, timestamp=1764115200000), Sample(value=STALE_NAN)])])
    >>> body = bytes(cramjam.snappy.compress_raw(req.SerializeToString()))
    >>> result = parse_remote_write(body, Limits())
    >>> result.batch.node.tolist(), result.batch.ts.tolist(), dict(result.skipped)
    (['web-1'], [1764115200.0], {'stale': 1})
    """
    request = WriteRequest()
    try:
        request.ParseFromString(snappy_decompress(body, max_bytes))
    except DecodeError as exc:
        raise IngestError(
            [{"error": f"body is not a remote_write WriteRequest: {exc}"}], 400
        ) from None
    timeseries = request.timeseries
    total = sum(map(len, (series.samples for series in timeseries)))
    if total > limits.max_samples:
        raise IngestError(
            [{"error": f"too many samples: at most {limits.max_samples} per request"}], status=413
        )

    skipped: Counter[str] = Counter()
    nodes: list[str] = []
    metrics: list[str] = []
    stamps_ms: list[int] = []
    values: list[float] = []
    valid: dict[str, bool] = {}  # names checked once per request, not once per series
    for series in timeseries:
        node = metric = None
        for label in series.labels:
            name = label.name
            if name == "__name__":
                metric = label.value
            elif name == node_label:
                node = label.value
        if not metric:
            labels = {label.name: label.value for label in series.labels}
            raise IngestError([{"error": f"a series has no __name__ label: {labels}"}], 400)
        samples = series.samples
        n = len(samples)
        if not node:
            skipped["no_node"] += n
            continue
        for name in (node, metric):
            if name not in valid:
                valid[name] = NAME_PATTERN.match(name) is not None
        if not (valid[node] and valid[metric]):
            skipped["bad_name"] += n
            continue
        if n == 1:  # what Prometheus sends: one sample per series per request
            sample = samples[0]
            nodes.append(node)
            metrics.append(metric)
            stamps_ms.append(sample.timestamp)
            values.append(sample.value)
            continue
        nodes.extend([node] * n)
        metrics.extend([metric] * n)
        for sample in samples:
            stamps_ms.append(sample.timestamp)
            values.append(sample.value)

    value = np.asarray(values, dtype=np.float64)
    ts = np.asarray(stamps_ms, dtype=np.int64) / 1000.0
    stale = value.view(np.uint64) == np.uint64(STALE_NAN_BITS)
    keep = np.isfinite(value)
    skipped["stale"] += int(stale.sum())
    skipped["non_finite"] += int((~keep & ~stale).sum())
    if limits.now:
        in_window = (ts >= limits.now - limits.max_age_s) & (
            ts <= limits.now + limits.future_tolerance_s
        )
        skipped["out_of_window"] += int((keep & ~in_window).sum())
        keep &= in_window
    index = np.flatnonzero(keep)
    batch = SampleBatch.from_columns(nodes, metrics, ts, value).take(index)
    return RemoteWriteResult(batch=batch, skipped=+skipped)
