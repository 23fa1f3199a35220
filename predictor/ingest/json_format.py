"""JSON wire formats -> validated columnar batches.

Two shapes are accepted on ``POST /v1/metrics``::

    {"samples": [{"node": "web-1", "metric": "cpu", "ts": 1764115200.0, "value": 0.42,
                  "labels": {"dc": "eu"}}]}
    {"node": "web-1", "ts": "2025-11-26T00:00:00Z", "values": {"cpu": 0.42, "mem": 0.7}}

(a JSON list of the second shape is accepted too). A batch is all or nothing: any bad
sample rejects the whole batch with every offending sample named. The second, per-node
shape is the cheaper one to parse by far (one object per scrape of a node, not one per
sample); :func:`node_groups` writes it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain, pairwise
from operator import itemgetter
from typing import Any

import numpy as np
import orjson

from predictor.ingest.batch import SampleBatch

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.:/\-]{1,200}$")
SAMPLE_FIELDS = {"node", "metric", "ts", "value", "labels"}
COMPACT_FIELDS = {"node", "ts", "values", "labels"}
MAX_ERRORS_REPORTED = 50
_BULK_SAMPLE = ("node", "metric", "ts", "value")
_BULK_GROUP = ("node", "ts", "values")
_SAMPLE_FIELDS = tuple(map(itemgetter, _BULK_SAMPLE))
_GROUP_FIELDS = tuple(map(itemgetter, _BULK_GROUP))
_NUMBER_TYPES = {int, float}


@dataclass
class IngestError(Exception):
    """A rejected batch; ``errors`` name the offending samples."""

    errors: list[dict[str, Any]] = field(default_factory=list)
    status: int = 422

    def __str__(self) -> str:
        return f"{len(self.errors)} invalid sample(s): {self.errors[:3]}"


@dataclass(frozen=True)
class Limits:
    """Validation bounds, taken from settings by the route."""

    max_samples: int = 100_000
    now: float = 0.0  # wall-clock now; 0 disables the time-window checks
    future_tolerance_s: float = 3600.0
    max_age_s: float = 20 * 365 * 86400.0


def parse_ts(raw: Any) -> float:
    """Unix seconds from a number or an RFC 3339 string."""
    if isinstance(raw, bool):
        raise ValueError("ts must be a number or an RFC 3339 string")
    if isinstance(raw, int | float):
        ts = _to_float(raw)
    elif isinstance(raw, str):
        try:
            # RFC 3339 allows a lower-case "t" and "z"; fromisoformat wants upper case.
            parsed = datetime.fromisoformat(raw.upper().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"ts {raw!r} is not RFC 3339") from None
        if parsed.tzinfo is None:
            raise ValueError(f"ts {raw!r} has no time zone")
        ts = parsed.timestamp()
    else:
        raise ValueError("ts must be a number or an RFC 3339 string")
    if not math.isfinite(ts):
        raise ValueError("ts is not finite")
    return ts


def _to_float(raw: int | float) -> float:
    try:
        return float(raw)
    except OverflowError:  # an integer beyond the double range
        return math.inf if raw > 0 else -math.inf


def _check_value(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError("value must be a number")
    value = _to_float(raw)
    if not math.isfinite(value):
        raise ValueError("value must be finite (NaN and infinity are not samples)")
    return value


def _check_name(raw: Any, what: str) -> str:
    if not isinstance(raw, str) or not NAME_PATTERN.match(raw):
        raise ValueError(f"{what} must be 1-200 characters of [A-Za-z0-9_.:/-]")
    return raw


def _check_labels(raw: Any) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise ValueError("labels must be an object of string values")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        error = exc
    # orjson refuses valid JSON whose numbers overflow a double (1e400); the stdlib parser
    # reads them as infinity, so the validation below names the offending sample instead.
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise IngestError([{"error": f"malformed JSON: {error}"}], status=400) from None


def _count_samples(doc: Any) -> int:
    """How many samples a body holds, valid or not (for the size limit)."""
    if isinstance(doc, dict) and isinstance(doc.get("samples"), list):
        return len(doc["samples"])
    groups = doc if isinstance(doc, list) else [doc]
    return sum(
        len(g["values"]) if isinstance(g, dict) and isinstance(g.get("values"), dict) else 1
        for g in groups
    )


def _bulk_columns(
    nodes: list[Any],
    metrics: list[Any],
    stamps: list[Any],
    values: list[Any],
    limits: Limits,
    group_sizes: list[int] | None = None,
) -> SampleBatch | None:
    """Columns checked as wholes: names once per distinct name, numbers as arrays.

    With ``group_sizes``, ``nodes`` and ``stamps`` hold one entry per group, repeated
    that many times once checked. None when anything is off (or a timestamp is a string):
    the caller then validates sample by sample, which names every offender. Both paths
    accept the same batches.
    """
    try:
        names = {*nodes, *metrics}  # unhashable: TypeError
        if set(map(type, names)) - {str} or not all(map(NAME_PATTERN.match, names)):
            return None
        # By type, not isinstance: a bool is an int, and not a sample value here.
        if set(map(type, stamps)) - _NUMBER_TYPES or set(map(type, values)) - _NUMBER_TYPES:
            return None
        ts, value = np.array(stamps, dtype=np.float64), np.array(values, dtype=np.float64)
    except (TypeError, OverflowError):
        return None
    if not (np.isfinite(ts).all() and np.isfinite(value).all()):
        return None
    if (
        limits.now
        and not (
            (ts >= limits.now - limits.max_age_s) & (ts <= limits.now + limits.future_tolerance_s)
        ).all()
    ):
        return None
    node = np.array(nodes, dtype=object)
    if group_sizes is not None:
        node, ts = np.repeat(node, group_sizes), np.repeat(ts, group_sizes)
    return SampleBatch(node, np.array(metrics, dtype=object), ts, value)


def _bulk(doc: Any, limits: Limits) -> SampleBatch | None:
    """The fast path for well-formed bodies without labels (see :func:`_bulk_columns`).

    Loops run in C (``map``): an object with exactly as many keys as the shape has, all
    of which are found, has no other key.
    """
    try:
        if isinstance(doc, dict) and isinstance(doc.get("samples"), list) and len(doc) == 1:
            items = doc["samples"]
            if set(map(type, items)) - {dict} or set(map(len, items)) - {len(_BULK_SAMPLE)}:
                return None
            nodes, metrics, stamps, values = (list(map(get, items)) for get in _SAMPLE_FIELDS)
            return _bulk_columns(nodes, metrics, stamps, values, limits)
        groups = doc if isinstance(doc, list) else [doc]
        if set(map(type, groups)) - {dict} or set(map(len, groups)) - {len(_BULK_GROUP)}:
            return None
        nodes, stamps, maps = (list(map(get, groups)) for get in _GROUP_FIELDS)
    except KeyError:
        return None
    if set(map(type, maps)) - {dict}:
        return None
    return _bulk_columns(
        nodes, list(chain.from_iterable(maps)), stamps,
        list(chain.from_iterable(map(dict.values, maps))), limits, list(map(len, maps)),
    )  # fmt: skip


def node_groups(batch: SampleBatch) -> list[dict[str, Any]]:
    """``batch`` in the per-node shape: each run of samples with one node and one timestamp
    becomes ``{"node", "ts", "values": {metric: value}}``. A metric repeated within a run
    would be lost in its object, so that is refused."""
    node, ts = batch.node, batch.ts
    starts = np.flatnonzero((node[1:] != node[:-1]) | (ts[1:] != ts[:-1])) + 1
    bounds = [0, *starts.tolist(), len(batch)] if len(batch) else []
    nodes, stamps = node.tolist(), ts.tolist()
    metrics, values = batch.metric.tolist(), batch.value.tolist()
    groups = [
        {
            "node": nodes[a],
            "ts": stamps[a],
            "values": dict(zip(metrics[a:b], values[a:b], strict=True)),
        }
        for a, b in pairwise(bounds)
    ]
    if sum(len(g["values"]) for g in groups) != len(batch):
        raise ValueError("a metric appears twice for one node and timestamp")
    return groups


def parse_metrics_json(body: bytes, limits: Limits) -> SampleBatch:
    """Parse and validate a JSON metrics body; raise :class:`IngestError` on any bad sample."""
    doc = _loads(body)
    # Checked before validation: an oversized body is refused whatever its samples hold.
    if _count_samples(doc) > limits.max_samples:
        raise IngestError(
            [{"error": f"too many samples: at most {limits.max_samples} per request"}], status=413
        )
    if (batch := _bulk(doc, limits)) is not None:
        return batch
    return _one_by_one(doc, limits)


def _one_by_one(doc: Any, limits: Limits) -> SampleBatch:
    """Validate sample by sample, naming every offender (at most MAX_ERRORS_REPORTED)."""
    nodes: list[str] = []
    metrics: list[str] = []
    stamps: list[float] = []
    values: list[float] = []
    errors: list[dict[str, Any]] = []

    def fail(index: int, message: str) -> None:
        if len(errors) < MAX_ERRORS_REPORTED:
            errors.append({"index": index, "error": message})

    def check_window(ts: float) -> None:
        if limits.now and not (
            limits.now - limits.max_age_s <= ts <= limits.now + limits.future_tolerance_s
        ):
            raise ValueError("ts is too far in the future or past")

    if isinstance(doc, dict) and "samples" in doc:
        if set(doc) - {"samples"}:
            raise IngestError([{"error": f"unknown fields {sorted(set(doc) - {'samples'})}"}])
        items = doc["samples"]
        if not isinstance(items, list):
            raise IngestError([{"error": "samples must be a list"}])
        for i, item in enumerate(items):
            try:
                if not isinstance(item, dict):
                    raise ValueError("a sample must be an object")
                unknown = set(item) - SAMPLE_FIELDS
                if unknown:
                    raise ValueError(f"unknown fields {sorted(unknown)}")
                missing = {"node", "metric", "ts", "value"} - set(item)
                if missing:
                    raise ValueError(f"missing fields {sorted(missing)}")
                node = _check_name(item["node"], "node")
                metric = _check_name(item["metric"], "metric")
                ts = parse_ts(item["ts"])
                check_window(ts)
                value = _check_value(item["value"])
                _check_labels(item.get("labels"))
            except ValueError as exc:
                fail(i, str(exc))
                continue
            nodes.append(node)
            metrics.append(metric)
            stamps.append(ts)
            values.append(value)
    else:
        groups = doc if isinstance(doc, list) else [doc]
        for i, group in enumerate(groups):
            try:
                if not isinstance(group, dict):
                    raise ValueError("expected {'samples': [...]} or {'node', 'ts', 'values'}")
                unknown = set(group) - COMPACT_FIELDS
                if unknown:
                    raise ValueError(f"unknown fields {sorted(unknown)}")
                missing = {"node", "ts", "values"} - set(group)
                if missing:
                    raise ValueError(f"missing fields {sorted(missing)}")
                node = _check_name(group["node"], "node")
                ts = parse_ts(group["ts"])
                check_window(ts)
                _check_labels(group.get("labels"))
                if not isinstance(group["values"], dict):
                    raise ValueError("values must be an object {metric: number}")
                checked = [
                    (_check_name(m, "metric"), _check_value(v)) for m, v in group["values"].items()
                ]
            except ValueError as exc:
                fail(i, str(exc))
                continue
            for metric, value in checked:
                nodes.append(node)
                metrics.append(metric)
                stamps.append(ts)
                values.append(value)

    if errors:
        raise IngestError(errors)
    return SampleBatch.from_columns(nodes, metrics, stamps, values)
