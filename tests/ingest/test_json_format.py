"""JSON ingest: both body shapes, every rejection path, and property tests."""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from predictor.ingest import IngestError, Limits, SampleBatch, parse_metrics_json
from predictor.ingest.json_format import _bulk, _one_by_one, node_groups

NOW = 1_764_115_200.0  # 2025-11-26T00:00:00Z
GOOD = '{"node": "web-1", "metric": "cpu", "ts": 1764115200, "value": 0.5}'
GOOD_COMPACT = '{"node": "web-1", "ts": 1764115200, "values": {"cpu": 0.5}}'


def rejected(body: bytes | str, limits: Limits | None = None) -> IngestError:
    raw = body.encode() if isinstance(body, str) else body
    with pytest.raises(IngestError) as info:
        parse_metrics_json(raw, limits or Limits())
    return info.value


def indices(err: IngestError) -> list[int]:
    return [e["index"] for e in err.errors]


# -- accepted bodies ---------------------------------------------------------------------
def test_samples_shape_becomes_columns_in_order() -> None:
    body = {
        "samples": [
            {"node": "web-1", "metric": "cpu", "ts": 100, "value": 1},
            {"node": "db-2", "metric": "node_memory_MemFree_bytes", "ts": 101.5, "value": -2.5},
            {"node": "web-1", "metric": "disk/io:read.ops", "ts": 102, "value": 0,
             "labels": {"dc": "eu"}},
        ]
    }  # fmt: skip
    batch = parse_metrics_json(orjson.dumps(body), Limits())
    assert isinstance(batch, SampleBatch)
    assert batch.node.tolist() == ["web-1", "db-2", "web-1"]
    assert batch.metric.tolist() == ["cpu", "node_memory_MemFree_bytes", "disk/io:read.ops"]
    assert batch.ts.tolist() == [100.0, 101.5, 102.0]
    assert batch.value.tolist() == [1.0, -2.5, 0.0]
    assert batch.ts.dtype == np.float64 and batch.value.dtype == np.float64


def test_compact_object_expands_one_sample_per_metric() -> None:
    body = '{"node": "web-1", "ts": "2025-11-26T00:00:00Z", "values": {"cpu": 0.42, "mem": 7}}'
    batch = parse_metrics_json(body.encode(), Limits())
    assert batch.node.tolist() == ["web-1", "web-1"]
    assert batch.metric.tolist() == ["cpu", "mem"]
    assert batch.ts.tolist() == [NOW, NOW]
    assert batch.value.tolist() == [0.42, 7.0]


def test_compact_list_keeps_group_order() -> None:
    body = [
        {"node": "a", "ts": 10, "values": {"x": 1, "y": 2}},
        {"node": "b", "ts": 11, "values": {}},
        {"node": "c", "ts": 12, "values": {"x": 3}, "labels": {"rack": "r1"}},
    ]
    batch = parse_metrics_json(orjson.dumps(body), Limits())
    assert batch.to_frame().to_dict("list") == {
        "node": ["a", "a", "c"],
        "metric": ["x", "y", "x"],
        "ts": [10.0, 10.0, 12.0],
        "value": [1.0, 2.0, 3.0],
    }


def test_node_groups_write_the_per_node_shape_that_parses_back_to_the_batch() -> None:
    batch = SampleBatch.from_columns(
        ["a", "a", "a", "b", "a", "a"], ["x", "y", "x", "x", "x", "y"],
        [10.0, 10.0, 20.0, 20.0, 30.0, 30.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    )  # fmt: skip
    groups = node_groups(batch)
    # A new object wherever the node or the timestamp changes.
    assert [(g["node"], g["ts"], g["values"]) for g in groups] == [
        ("a", 10.0, {"x": 1.0, "y": 2.0}),
        ("a", 20.0, {"x": 3.0}),
        ("b", 20.0, {"x": 4.0}),
        ("a", 30.0, {"x": 5.0, "y": 6.0}),
    ]
    parsed = parse_metrics_json(orjson.dumps(groups), Limits())
    assert parsed.to_frame().equals(batch.to_frame())
    assert node_groups(SampleBatch.empty()) == []


def test_node_groups_refuse_a_metric_twice_in_one_object() -> None:
    twice = SampleBatch.from_columns(["a", "a"], ["x", "x"], [10.0, 10.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="twice"):
        node_groups(twice)


@pytest.mark.parametrize("body", [b'{"samples": []}', b"[]"])
def test_empty_batches_are_empty(body: bytes) -> None:
    assert len(parse_metrics_json(body, Limits(now=NOW))) == 0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (1764115200, NOW),
        (1764115200.25, NOW + 0.25),
        ('"2025-11-26T00:00:00Z"', NOW),
        ('"2025-11-26T00:00:00.5Z"', NOW + 0.5),
        ('"2025-11-26T00:00:00+00:00"', NOW),
        ('"2025-11-26T02:00:00+02:00"', NOW),
        ('"2025-11-25T18:30:00-05:30"', NOW),
        ('"2025-11-26 00:00:00Z"', NOW),
        # RFC 3339 5.6: "T" and "Z" may be lower case.
        ('"2025-11-26t00:00:00z"', NOW),
    ],
)
def test_ts_as_unix_seconds_or_rfc3339(raw: object, expected: float) -> None:
    for body in (
        f'{{"samples": [{{"node": "n", "metric": "m", "ts": {raw}, "value": 1}}]}}',
        f'{{"node": "n", "ts": {raw}, "values": {{"m": 1}}}}',
    ):
        assert parse_metrics_json(body.encode(), Limits(now=NOW)).ts.tolist() == [expected]


def test_integers_beyond_int64_are_numbers() -> None:
    body = '{"node": "n", "ts": 1, "values": {"m": 18446744073709551616}}'
    assert parse_metrics_json(body.encode(), Limits()).value.tolist() == [2.0**64]


# -- rejected samples: each names its index and nothing is returned ------------------------
BAD_SAMPLES = {
    "value as string": '{"node": "n", "metric": "m", "ts": 1, "value": "0.5"}',
    "value NaN string": '{"node": "n", "metric": "m", "ts": 1, "value": "NaN"}',
    "value inf string": '{"node": "n", "metric": "m", "ts": 1, "value": "Infinity"}',
    "value -inf string": '{"node": "n", "metric": "m", "ts": 1, "value": "-inf"}',
    "value huge exponent": '{"node": "n", "metric": "m", "ts": 1, "value": 1e400}',
    "value huge negative exponent": '{"node": "n", "metric": "m", "ts": 1, "value": -1e999}',
    "value huge integer": '{"node": "n", "metric": "m", "ts": 1, "value": 1' + "0" * 400 + "}",
    "value true": '{"node": "n", "metric": "m", "ts": 1, "value": true}',
    "value false": '{"node": "n", "metric": "m", "ts": 1, "value": false}',
    "value null": '{"node": "n", "metric": "m", "ts": 1, "value": null}',
    "value list": '{"node": "n", "metric": "m", "ts": 1, "value": [1]}',
    "value object": '{"node": "n", "metric": "m", "ts": 1, "value": {"v": 1}}',
    "ts bool": '{"node": "n", "metric": "m", "ts": true, "value": 1}',
    "ts null": '{"node": "n", "metric": "m", "ts": null, "value": 1}',
    "ts huge exponent": '{"node": "n", "metric": "m", "ts": 1e400, "value": 1}',
    "ts words": '{"node": "n", "metric": "m", "ts": "yesterday", "value": 1}',
    "ts naive": '{"node": "n", "metric": "m", "ts": "2025-11-26T00:00:00", "value": 1}',
    "ts date only": '{"node": "n", "metric": "m", "ts": "2025-11-26", "value": 1}',
    "ts offset out of range": '{"node": "n", "metric": "m", "ts": "2025-11-26T00:00:00+24:00",'
    ' "value": 1}',
    "ts list": '{"node": "n", "metric": "m", "ts": [1], "value": 1}',
    "node empty": '{"node": "", "metric": "m", "ts": 1, "value": 1}',
    "node space": '{"node": "web 1", "metric": "m", "ts": 1, "value": 1}',
    "node non-ascii": '{"node": "n\\u00f6de", "metric": "m", "ts": 1, "value": 1}',
    "node too long": '{"node": "' + "n" * 201 + '", "metric": "m", "ts": 1, "value": 1}',
    "node number": '{"node": 5, "metric": "m", "ts": 1, "value": 1}',
    "node null": '{"node": null, "metric": "m", "ts": 1, "value": 1}',
    "metric with quote": '{"node": "n", "metric": "a\\"b", "ts": 1, "value": 1}',
    "metric braces": '{"node": "n", "metric": "cpu{mode=idle}", "ts": 1, "value": 1}',
    "metric empty": '{"node": "n", "metric": "", "ts": 1, "value": 1}',
    "unknown field": '{"node": "n", "metric": "m", "ts": 1, "value": 1, "unit": "s"}',
    "missing node": '{"metric": "m", "ts": 1, "value": 1}',
    "missing metric": '{"node": "n", "ts": 1, "value": 1}',
    "missing ts": '{"node": "n", "metric": "m", "value": 1}',
    "missing value": '{"node": "n", "metric": "m", "ts": 1}',
    "labels not object": '{"node": "n", "metric": "m", "ts": 1, "value": 1, "labels": ["a"]}',
    "labels number value": '{"node": "n", "metric": "m", "ts": 1, "value": 1, "labels": {"a": 1}}',
    "not an object": "5",
    "a list": '["n", "m", 1, 1]',
    "null": "null",
}


@pytest.mark.parametrize("bad", BAD_SAMPLES.values(), ids=BAD_SAMPLES.keys())
def test_bad_sample_rejects_the_whole_batch_naming_its_index(bad: str) -> None:
    err = rejected(f'{{"samples": [{GOOD}, {bad}, {GOOD}]}}')
    assert err.status == 422
    assert indices(err) == [1]
    assert err.errors[0]["error"]
    assert "1 invalid sample" in str(err)


BAD_GROUPS = {
    "values not object": '{"node": "n", "ts": 1, "values": [1, 2]}',
    "values number": '{"node": "n", "ts": 1, "values": 5}',
    "bad metric name": '{"node": "n", "ts": 1, "values": {"cpu": 1, "bad metric": 2}}',
    "value NaN string": '{"node": "n", "ts": 1, "values": {"cpu": "NaN"}}',
    "value inf string": '{"node": "n", "ts": 1, "values": {"cpu": "inf"}}',
    "value huge exponent": '{"node": "n", "ts": 1, "values": {"cpu": 1, "mem": 2E+308}}',
    "value bool": '{"node": "n", "ts": 1, "values": {"up": true}}',
    "value null": '{"node": "n", "ts": 1, "values": {"cpu": null}}',
    "ts naive": '{"node": "n", "ts": "2025-11-26T00:00:00", "values": {"cpu": 1}}',
    "ts bool": '{"node": "n", "ts": false, "values": {"cpu": 1}}',
    "ts huge exponent": '{"node": "n", "ts": -1e400, "values": {"cpu": 1}}',
    "bad node": '{"node": "a/b c", "ts": 1, "values": {"cpu": 1}}',
    "unknown field": '{"node": "n", "ts": 1, "values": {"cpu": 1}, "metric": "x"}',
    "missing values": '{"node": "n", "ts": 1}',
    "missing ts": '{"node": "n", "values": {"cpu": 1}}',
    "missing node": '{"ts": 1, "values": {"cpu": 1}}',
    "labels bad": '{"node": "n", "ts": 1, "values": {"cpu": 1}, "labels": "dc=eu"}',
    "not an object": '"web-1"',
    "a list": "[1, 2]",
}


@pytest.mark.parametrize("bad", BAD_GROUPS.values(), ids=BAD_GROUPS.keys())
def test_bad_compact_group_rejects_the_whole_batch_naming_its_index(bad: str) -> None:
    err = rejected(f"[{GOOD_COMPACT}, {GOOD_COMPACT}, {bad}]")
    assert err.status == 422
    assert indices(err) == [2]


def test_single_bad_compact_object_is_index_0() -> None:
    err = rejected('{"node": "n", "ts": "2025-11-26T00:00:00", "values": {"cpu": 1}}')
    assert indices(err) == [0]
    assert "time zone" in err.errors[0]["error"]


def test_every_bad_sample_is_named_up_to_the_cap() -> None:
    bad = '{"node": "n", "metric": "m", "ts": 1, "value": "x"}'
    err = rejected(f'{{"samples": [{bad}, {GOOD}, {bad}, {bad}]}}')
    assert indices(err) == [0, 2, 3]
    many = rejected(orjson.dumps({"samples": [orjson.loads(bad)] * 80}))
    assert indices(many) == list(range(50))


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"not json", b"\xff\xfe", b'{"samples": [NaN]}', b"[Infinity]", b"[1,]",
     b'{"samples": []} trailing'],
)  # fmt: skip
def test_malformed_json_is_400(body: bytes) -> None:
    err = rejected(body)
    assert err.status == 400
    assert "malformed JSON" in err.errors[0]["error"]


@pytest.mark.parametrize(
    "body",
    ['{"samples": {"node": "n"}}', '{"samples": [], "extra": 1}', '{"samples": null}'],
)
def test_bad_envelope_is_422(body: str) -> None:
    err = rejected(body)
    assert err.status == 422 and len(err.errors) == 1


# -- limits ------------------------------------------------------------------------------
def test_too_many_samples_is_413() -> None:
    three = f'{{"samples": [{GOOD}, {GOOD}, {GOOD}]}}'
    assert len(parse_metrics_json(three.encode(), Limits(max_samples=3))) == 3
    assert rejected(three, Limits(max_samples=2)).status == 413
    compact = '[{"node": "a", "ts": 1, "values": {"x": 1, "y": 2}}, ' + GOOD_COMPACT + "]"
    assert len(parse_metrics_json(compact.encode(), Limits(max_samples=3))) == 3
    err = rejected(compact, Limits(max_samples=2))
    assert err.status == 413 and "at most 2" in err.errors[0]["error"]


def test_too_many_samples_is_413_even_when_many_are_invalid() -> None:
    bad = {"node": "n", "metric": "m", "ts": 1, "value": "x"}
    err = rejected(orjson.dumps({"samples": [bad] * 60}), Limits(max_samples=50))
    assert err.status == 413


@pytest.mark.parametrize(
    ("ts", "ok"),
    [
        (NOW, True),
        (NOW + 3599, True),
        (NOW + 3601, False),
        (NOW - 86399, True),
        (NOW - 86401, False),
        (1e15, False),
        (-1e9, False),
    ],
)
def test_time_window_when_now_is_set(ts: float, ok: bool) -> None:
    limits = Limits(now=NOW, future_tolerance_s=3600, max_age_s=86400)
    body = f'{{"samples": [{GOOD}, {{"node": "n", "metric": "m", "ts": {ts}, "value": 1}}]}}'
    if ok:
        assert parse_metrics_json(body.encode(), limits).ts[1] == ts
    else:
        err = rejected(body, limits)
        assert err.status == 422 and indices(err) == [1]
        assert "future or past" in err.errors[0]["error"]
    # now=0 disables the window entirely
    assert parse_metrics_json(body.encode(), Limits(now=0.0)).ts[1] == ts


def test_time_window_errors_name_the_sample_after_other_bad_samples() -> None:
    limits = Limits(now=NOW)
    future = f'{{"node": "n", "metric": "m", "ts": {NOW + 10 * 86400}, "value": 1}}'
    bad = '{"node": "n", "metric": "m", "ts": 1, "value": "x"}'
    err = rejected(f'{{"samples": [{bad}, {GOOD}, {future}]}}', limits)
    assert indices(err) == [0, 2]


def test_time_window_errors_name_the_compact_group() -> None:
    limits = Limits(now=NOW)
    future = f'{{"node": "b", "ts": {NOW + 10 * 86400}, "values": {{"x": 1, "y": 2, "z": 3}}}}'
    ok = f'{{"node": "a", "ts": {NOW}, "values": {{"x": 1, "y": 2}}}}'
    err = rejected(f"[{ok}, {future}]", limits)
    assert indices(err) == [1]


# -- properties --------------------------------------------------------------------------
NAME_CHARS = string.ascii_letters + string.digits + "_.:/-"
names = st.text(alphabet=NAME_CHARS, min_size=1, max_size=40)
numbers = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**63), 2**63 - 1)
ZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
datetimes = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.sampled_from(ZONES)
)


@st.composite
def stamps(draw: st.DrawFn) -> tuple[object, float]:
    """A wire timestamp and the unix seconds it means."""
    if draw(st.booleans()):
        value = draw(numbers)
        return value, float(value)
    moment = draw(datetimes)
    text = moment.isoformat()
    if moment.tzinfo is UTC and draw(st.booleans()):
        text = text.replace("+00:00", "Z")
    return text, moment.timestamp()


@st.composite
def valid_bodies(draw: st.DrawFn) -> tuple[bytes, list[tuple[str, str, float, float]]]:
    """A valid body (either shape) and the (node, metric, ts, value) rows it must yield."""
    expected: list[tuple[str, str, float, float]] = []
    if draw(st.booleans()):
        samples = []
        for _ in range(draw(st.integers(0, 20))):
            node, metric, (ts, t), value = draw(names), draw(names), draw(stamps()), draw(numbers)
            sample = {"node": node, "metric": metric, "ts": ts, "value": value}
            if draw(st.booleans()):
                sample["labels"] = draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5)))
            samples.append(sample)
            expected.append((node, metric, t, float(value)))
        return orjson.dumps({"samples": samples}), expected
    groups = []
    for _ in range(draw(st.integers(1, 8))):
        node, (ts, t) = draw(names), draw(stamps())
        values = draw(st.dictionaries(names, numbers, max_size=6))
        groups.append({"node": node, "ts": ts, "values": values})
        expected += [(node, m, t, float(v)) for m, v in values.items()]
    body = groups[0] if len(groups) == 1 and draw(st.booleans()) else groups
    return orjson.dumps(body), expected


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_bodies())
def test_valid_batches_round_trip_exactly(case: tuple[bytes, list]) -> None:
    body, expected = case
    batch = parse_metrics_json(body, Limits())
    assert len(batch) == len(expected)
    assert batch.node.tolist() == [e[0] for e in expected]
    assert batch.metric.tolist() == [e[1] for e in expected]
    assert batch.ts.tolist() == [e[2] for e in expected]
    assert batch.value.tolist() == [e[3] for e in expected]


def _parse_or_ingest_error(body: bytes, limits: Limits) -> None:
    try:
        batch = parse_metrics_json(body, limits)
    except IngestError as err:
        assert err.status in (400, 413, 422)
        assert err.errors
        return
    assert np.isfinite(batch.value).all() and np.isfinite(batch.ts).all()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_ingest_error(body: bytes) -> None:
    _parse_or_ingest_error(body, Limits(max_samples=5, now=NOW))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | numbers
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["2025-11-26T00:00:00Z", "2025-11-26T00:00:00", "NaN", "inf"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
fields = st.sampled_from(["node", "metric", "ts", "value", "values", "labels", "samples", "x"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.dictionaries(fields, json_values | names), max_size=4))
def test_arbitrary_json_raises_only_ingest_error(items: list[dict]) -> None:
    limits = Limits(max_samples=5, now=NOW)
    for doc in ({"samples": items}, items, items[0] if items else {}):
        _parse_or_ingest_error(orjson.dumps(doc), limits)


def _same_as_one_by_one(doc: object, limits: Limits) -> None:
    """The bulk path accepts only what the sample-by-sample path accepts, with equal columns."""
    fast = _bulk(doc, limits)
    try:
        slow = _one_by_one(doc, limits)
    except IngestError:
        assert fast is None
        return
    if fast is not None:
        for column in ("node", "metric", "ts", "value"):
            assert getattr(fast, column).tolist() == getattr(slow, column).tolist()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_bodies(), st.lists(st.dictionaries(fields, json_values | names), max_size=4))
def test_bulk_path_agrees_with_the_sample_by_sample_path(
    case: tuple[bytes, list], items: list[dict]
) -> None:
    limits = Limits(max_samples=10_000, now=NOW)
    _same_as_one_by_one(orjson.loads(case[0]), Limits())
    for doc in ({"samples": items}, items, items[0] if items else {}):
        _same_as_one_by_one(doc, limits)


def test_bulk_path_takes_plain_batches_and_leaves_the_rest() -> None:
    plain = {"samples": [{"node": "a", "metric": "cpu", "ts": NOW, "value": 1}]}
    assert _bulk(plain, Limits(now=NOW)) is not None
    assert _bulk([{"node": "a", "ts": NOW, "values": {"cpu": 1.5}}], Limits(now=NOW)) is not None
    labelled = {"samples": [{**plain["samples"][0], "labels": {"dc": "eu"}}]}
    assert _bulk(labelled, Limits(now=NOW)) is None  # checked sample by sample
    boolean = {"samples": [{**plain["samples"][0], "value": True}]}
    assert _bulk(boolean, Limits(now=NOW)) is None
    # As many keys as the shape, one of them unknown: the fast path counts and looks up.
    swapped = {"samples": [{"node": "a", "metric": "cpu", "ts": NOW, "labels": {}}]}
    assert _bulk(swapped, Limits(now=NOW)) is None
    assert _bulk([{"node": "a", "ts": NOW, "labels": {"cpu": 1.5}}], Limits(now=NOW)) is None
    assert _bulk([{"node": "a", "ts": NOW, "values": [1.5]}], Limits(now=NOW)) is None
    with pytest.raises(IngestError):
        parse_metrics_json(orjson.dumps(swapped), Limits(now=NOW))
