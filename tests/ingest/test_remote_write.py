"""Prometheus remote_write bodies -> batches: mapping, staleness, 400s and skipped samples."""

from __future__ import annotations

import math
import struct

import cramjam
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from predictor.ingest import IngestError, Limits
from predictor.ingest.remote_write import (
    STALE_NAN,
    STALE_NAN_BITS,
    Label,
    Sample,
    TimeSeries,
    WriteRequest,
    parse_remote_write,
)

T0_MS = 1_764_115_200_000


def series(labels: dict[str, str], *points: tuple[int, float]) -> TimeSeries:
    return TimeSeries(
        labels=[Label(name=k, value=v) for k, v in sorted(labels.items())],
        samples=[Sample(timestamp=ts, value=value) for ts, value in points],
    )


def body(*timeseries: TimeSeries) -> bytes:
    return bytes(
        cramjam.snappy.compress_raw(WriteRequest(timeseries=timeseries).SerializeToString())
    )


def test_labels_map_to_node_and_metric_and_ms_become_seconds() -> None:
    result = parse_remote_write(
        body(
            series({"__name__": "cpu", "instance": "web-1:9100", "job": "node"}, (T0_MS, 0.5)),
            series(
                {"__name__": "mem", "instance": "web-2"}, (T0_MS + 1500, 1.0), (T0_MS + 2500, 2)
            ),
        ),
        Limits(),
    )
    b = result.batch
    assert b.node.tolist() == ["web-1:9100", "web-2", "web-2"]
    assert b.metric.tolist() == ["cpu", "mem", "mem"]
    assert b.ts.tolist() == [T0_MS / 1000, T0_MS / 1000 + 1.5, T0_MS / 1000 + 2.5]
    assert b.value.tolist() == [0.5, 1.0, 2.0]
    assert not result.skipped


def test_node_label_is_configurable() -> None:
    raw = body(series({"__name__": "cpu", "instance": "10.0.0.1:9100", "host": "db-1"}, (T0_MS, 1)))
    assert parse_remote_write(raw, Limits(), node_label="host").batch.node.tolist() == ["db-1"]


def test_staleness_markers_and_other_non_finite_values_are_skipped_and_counted() -> None:
    assert struct_bits(STALE_NAN) == STALE_NAN_BITS
    raw = body(
        series(
            {"__name__": "cpu", "instance": "a"},
            (T0_MS, 1.0), (T0_MS + 1000, STALE_NAN), (T0_MS + 2000, math.nan),
            (T0_MS + 3000, math.inf), (T0_MS + 4000, 3.0),
        )
    )  # fmt: skip
    result = parse_remote_write(raw, Limits())
    assert result.batch.value.tolist() == [1.0, 3.0]
    assert dict(result.skipped) == {"stale": 1, "non_finite": 2}


def struct_bits(value: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", value))[0]


def test_series_without_node_or_with_bad_names_are_skipped_not_fatal() -> None:
    raw = body(
        series({"__name__": "job:cpu:sum"}, (T0_MS, 4.0), (T0_MS + 1, 5.0)),  # a recording rule
        series({"__name__": "cpu", "instance": "[::1]:9100"}, (T0_MS, 1.0)),
        series({"__name__": "cpu", "instance": "ok"}, (T0_MS, 1.0)),
    )
    result = parse_remote_write(raw, Limits())
    assert result.batch.node.tolist() == ["ok"]
    assert dict(result.skipped) == {"no_node": 2, "bad_name": 1}


def test_timestamps_outside_the_window_are_skipped() -> None:
    now = T0_MS / 1000
    raw = body(
        series(
            {"__name__": "cpu", "instance": "a"},
            (T0_MS, 1.0), (T0_MS + 10 * 3_600_000, 2.0), (0, 3.0),
        )
    )  # fmt: skip
    result = parse_remote_write(raw, Limits(now=now, future_tolerance_s=3600))
    assert result.batch.value.tolist() == [1.0]
    assert dict(result.skipped) == {"out_of_window": 2}


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"not snappy at all", 400),
        (b"\xff\x06\x00\x00sNaPpY", 400),  # the *framed* format's stream header
        (bytes(cramjam.snappy.compress_raw(b"\xff\xff\xff")), 400),  # snappy, not protobuf
        (body(series({"instance": "a"}, (T0_MS, 1.0))), 400),  # a series without a name
    ],
)
def test_undecodable_bodies_are_400(raw: bytes, status: int) -> None:
    with pytest.raises(IngestError) as info:
        parse_remote_write(raw, Limits())
    assert info.value.status == status


def test_size_limits_are_413() -> None:
    big = body(series({"__name__": "cpu", "instance": "a"}, *[(T0_MS + i, 1.0) for i in range(50)]))
    with pytest.raises(IngestError) as info:
        parse_remote_write(big, Limits(max_samples=10))
    assert info.value.status == 413
    with pytest.raises(IngestError) as info:  # refused from the declared size, before inflating
        parse_remote_write(
            bytes(cramjam.snappy.compress_raw(b"\0" * 100_000)), Limits(), max_bytes=1000
        )
    assert info.value.status == 413


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "web-1"]),
            st.sampled_from(["cpu", "mem"]),
            st.integers(0, 2**41),
            st.floats(allow_nan=False, allow_infinity=False),
        ),
        max_size=30,
    )
)
def test_round_trip_keeps_every_finite_sample(points: list[tuple[str, str, int, float]]) -> None:
    raw = body(*[series({"__name__": m, "instance": n}, (ts, v)) for n, m, ts, v in points])
    b = parse_remote_write(raw, Limits()).batch
    assert list(zip(b.node, b.metric, b.ts, b.value, strict=True)) == [
        (n, m, ts / 1000, v) for n, m, ts, v in points
    ]
