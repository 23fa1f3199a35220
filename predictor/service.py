"""The service's parts wired together, and the keyword-only functions routes call."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from predictor.actuators import Actuator, make_actuator
from predictor.auth import ensure_first_key
from predictor.config import Settings
from predictor.ingest import Limits, SampleBatch, parse_metrics_json
from predictor.ingest.json_format import IngestError, parse_ts
from predictor.ingest.otlp import OtlpResult, decode_content, parse_otlp_metrics
from predictor.ingest.remote_write import parse_remote_write
from predictor.policy import DRAINED, Policy
from predictor.scoring.scorer import SCORED_POSITION, Scorer, ScorerThread
from predictor.store import Store, open_store
from predictor.stream import Publisher, StreamError
from predictor.telemetry import Telemetry
from predictor.training import ModelRegistry

logger = logging.getLogger(__name__)
EVENT_KINDS = ("failure", "recovery", "maintenance")
# How old the scoring backlog behind ingest backpressure may be while under the limit:
# reading it costs two store queries, which every request paid before (~8% of an API
# process's time at 1,000-sample batches).
BACKLOG_RECHECK_S = 0.25


@dataclass
class Backlog:
    """The last reading of the scoring backlog, plus the rows committed since."""

    rows: int = 0
    read_at: float = -math.inf  # time.monotonic()
    appended: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, rows: int) -> None:
        with self.lock:  # ingest requests run on several threads
            self.appended += rows


class Overloaded(Exception):
    """The service cannot take more now; the client should retry later (503)."""

    def __init__(self, retry_after_s: int, why: str = "scoring backlog is full"):
        super().__init__(f"{why}; retry in {retry_after_s}s")
        self.retry_after_s = retry_after_s


@dataclass
class Runtime:
    """Everything one running service holds.

    In the ``api`` role there is no scorer: batches go to the stream's ``publisher``
    (scale-out) or to the store that a ``scorer`` process follows, and risk is read from
    the store.
    """

    settings: Settings
    store: Store
    scorer: Scorer | None
    registry: ModelRegistry
    publisher: Publisher | None = None
    model_version: str | None = None
    thread: ScorerThread | None = None
    started: float = field(default_factory=time.time)
    model_refused: list[str] = field(default_factory=list)  # promoted versions that failed checks
    ingest_slots: threading.BoundedSemaphore = field(init=False)
    backlog: Backlog = field(default_factory=Backlog)
    telemetry: Telemetry = field(init=False)  # this runtime's own Prometheus registry

    def __post_init__(self) -> None:
        self.ingest_slots = threading.BoundedSemaphore(max(1, self.settings.max_inflight_ingest))
        self.telemetry = Telemetry()
        self.telemetry.watch(self)

    @classmethod
    def build(cls, settings: Settings, *, actuator: Actuator | None = None) -> Runtime:
        # Raises in prod without a model signing key: refuse to start rather than trust models.
        registry = ModelRegistry.from_settings(settings)
        store = open_store(settings)
        ensure_first_key(store=store, settings=settings)  # prod's first start: admin key
        if settings.role == "api":
            # With a stream: publish to it (scale-out). Without: commit to the store, which
            # a `--role scorer` process follows.
            return cls(
                settings=settings, store=store, scorer=None, registry=registry,
                publisher=Publisher(settings) if settings.nats_url else None,
            )  # fmt: skip
        if settings.role == "worker":
            raise ValueError("role worker has no API: use `predictor serve --role worker`")
        if not settings.dry_run:
            store.clear_dry_run_states()
        model, version = None, None
        loaded, refused = registry.load_serving()
        if loaded:
            model, manifest = loaded
            version = manifest["version"]
            if refused:
                logger.warning("serving earlier model %s (refused: %s)", version, refused)
        elif refused:
            logger.error("no batch model in service: every promoted version was refused")
        scorer = Scorer.build(
            settings=settings, store=store, actuator=actuator or make_actuator(settings),
            model=model, checkpoint_path=settings.checkpoint_path,
        )  # fmt: skip
        scorer.restore()  # the checkpoint holds online state; the model stays the one loaded
        return cls(
            settings=settings, store=store, scorer=scorer, registry=registry,
            model_version=version, model_refused=refused,
        )  # fmt: skip

    def start(self) -> None:
        if self.publisher is not None:
            self.publisher.start()
        if self.scorer is None:
            return
        self.thread = ScorerThread(
            self.scorer,
            checkpoint_every_s=self.settings.checkpoint_every_s,
            chunk_rows=self.settings.scoring_chunk_rows,
            separate_process=self.settings.role == "scorer",
        )
        self.thread.start()

    def stop(self) -> None:
        if self.thread is not None:
            self.thread.stop()
            self.thread = None
        if self.publisher is not None:
            self.publisher.close()
        self.store.close()

    def notify(self) -> None:
        if self.thread is not None:
            self.thread.wake.set()


# -- ingest ------------------------------------------------------------------------------
@contextmanager
def ingest_slot(*, runtime: Runtime) -> Iterator[None]:
    """Hold one of ``max_inflight_ingest`` request slots, or refuse at once with 503.

    Bounds the bodies held in memory and the commits queued on the store's write lock, so
    a burst is shed with Retry-After instead of piling up until the process runs out.
    """
    if not runtime.ingest_slots.acquire(blocking=False):
        raise Overloaded(retry_after_s=1)
    try:
        yield
    finally:
        runtime.ingest_slots.release()


def ingest_samples(*, runtime: Runtime, batch: SampleBatch, fmt: str = "json") -> int:
    """Commit a validated batch durably, then wake the scorer; return its size.

    ``fmt`` names the wire format it came in (for the ingest counters).
    """
    if not len(batch):
        return 0
    if runtime.publisher is not None:
        try:
            runtime.publisher.publish(batch)
        except StreamError as exc:
            raise Overloaded(retry_after_s=1, why=str(exc)) from exc
    else:
        lag = _backlog_over_limit(runtime)
        if lag is not None:
            raise Overloaded(retry_after_s=max(1, math.ceil(lag / 200_000)))
        runtime.store.append_samples(batch)
        runtime.backlog.add(len(batch))
        runtime.notify()
    runtime.telemetry.record_ingest(fmt, count=len(batch), newest_ts=float(batch.ts.max()))
    return len(batch)


def _backlog_over_limit(runtime: Runtime) -> int | None:
    """The scoring backlog if it is past ``max_unscored_rows``, else None.

    Between readings (at most every :data:`BACKLOG_RECHECK_S`) the last one plus the rows
    committed since stands in: an upper bound, as scoring only shrinks it (another API
    process's commits show at the next reading). A bound past the limit forces a fresh
    reading, so a refusal always rests on one.
    """
    limit, last = runtime.settings.max_unscored_rows, runtime.backlog
    now = time.monotonic()
    if last.rows + last.appended <= limit and now - last.read_at < BACKLOG_RECHECK_S:
        return None
    lag = scoring_lag_rows(runtime=runtime)
    runtime.backlog = Backlog(rows=lag, read_at=now)
    return lag if lag > limit else None


def scoring_lag_rows(*, runtime: Runtime) -> int:
    """Committed samples not scored yet, by this process's scorer or a scorer process."""
    if runtime.scorer is not None:
        return runtime.scorer.lag_rows()
    scored = int(runtime.store.get_meta(SCORED_POSITION) or 0)
    return max(0, runtime.store.last_sample_rowid() - scored)


def _limits(settings: Settings) -> Limits:
    return Limits(
        max_samples=settings.max_samples_per_request, now=time.time(),
        future_tolerance_s=settings.future_tolerance_s,
    )  # fmt: skip


def ingest_json(*, runtime: Runtime, body: bytes) -> int:
    batch = parse_metrics_json(body, _limits(runtime.settings))
    return ingest_samples(runtime=runtime, batch=batch)


def ingest_remote_write(*, runtime: Runtime, body: bytes) -> int:
    """Store a Prometheus remote_write body; return the samples kept (others are counted)."""
    s = runtime.settings
    result = parse_remote_write(
        body, _limits(s), node_label=s.remote_write_node_label, max_bytes=s.max_body_bytes
    )
    if result.skipped.get("no_node") and not len(result.batch):
        logger.warning(
            "remote_write: %d samples carry no %r label (PREDICTOR_REMOTE_WRITE_NODE_LABEL)",
            result.skipped["no_node"], s.remote_write_node_label,
        )  # fmt: skip
    count = ingest_samples(runtime=runtime, batch=result.batch, fmt="remote_write")
    runtime.telemetry.record_skipped("remote_write", result.skipped)
    return count


def ingest_otlp(
    *, runtime: Runtime, body: bytes, content_type: str, content_encoding: str | None
) -> OtlpResult:
    """Store an OTLP/HTTP metrics export; the result says what was kept and skipped."""
    s = runtime.settings
    result = parse_otlp_metrics(
        decode_content(body, content_encoding, s.max_body_bytes), content_type, _limits(s),
        node_attributes=tuple(s.otlp_node_attributes),
    )  # fmt: skip
    ingest_samples(runtime=runtime, batch=result.batch, fmt="otlp")
    runtime.telemetry.record_skipped("otlp", result.skipped)
    return result


def record_events(*, runtime: Runtime, events: list[dict[str, Any]]) -> int:
    runtime.store.add_events(events)
    return len(events)


def record_alertmanager(*, runtime: Runtime, payload: dict[str, Any]) -> int:
    """Alertmanager webhook alerts as failure (firing) / recovery (resolved) events.

    The node is the first of ``alertmanager_node_labels`` an alert carries; an alert with
    none is skipped. Each (fingerprint, status, start) is recorded once, however often
    Alertmanager re-sends it. Returns how many new events were stored.
    """
    events = []
    for alert in payload.get("alerts", []):
        labels = alert.get("labels") or {}
        node = next(
            (labels[k] for k in runtime.settings.alertmanager_node_labels if labels.get(k)), None
        )
        if node is None:
            continue
        resolved = alert.get("status") == "resolved"
        stamp = alert.get("endsAt") if resolved else alert.get("startsAt")
        summary = (alert.get("annotations") or {}).get("summary", "")
        reason = f"alertmanager: {labels.get('alertname', 'alert')} {summary}".strip()
        events.append(
            {
                "node": node,
                "ts": parse_ts(stamp),
                "kind": "recovery" if resolved else "failure",
                "reason": reason[:1000],
                "dedup_key": f"am:{alert['fingerprint']}:{alert.get('status')}:"
                f"{alert.get('startsAt')}",
            }
        )
    return runtime.store.add_events(events) if events else 0


def put_node(*, runtime: Runtime, node: str, meta: dict[str, Any]) -> dict[str, Any]:
    runtime.store.upsert_node(node, meta)
    return {"node": node, **(runtime.store.node(node) or {})}


# -- risk --------------------------------------------------------------------------------
def _risk_view(row: dict[str, Any], state: dict[str, Any] | None, now: float) -> dict[str, Any]:
    p_fail = row.get("p_fail")
    return {
        "node": row["node"],
        "ts": row["ts"],
        "risk": round(float(row["risk"]), 4),
        "online": round(float(row["online"]), 4),
        "batch": round(float(row["batch"]), 4),
        "p_fail": None if p_fail is None or p_fail != p_fail else round(float(p_fail), 4),
        "trend": round(float(row["trend"]), 4),
        "why": row["why"],
        "staleness_s": max(0.0, now - float(row["ts"])),
        "state": (state or {}).get("state", "active"),
    }


def fleet_risk(*, runtime: Runtime, top: int) -> list[dict[str, Any]]:
    if runtime.scorer is None:
        return _stored_risk(runtime=runtime, top=top)
    rows = runtime.scorer.latest.top(top)  # a partition, not a sort of the fleet
    now = runtime.scorer.engine.fleet_now()
    states = runtime.store.node_states()
    return [_risk_view(r, states.get(r["node"]), now) for r in rows]


def _stored_risk(*, runtime: Runtime, **which: Any) -> list[dict[str, Any]]:
    """Latest risk as the workers stored it (the api role has no scorer of its own)."""
    rows = runtime.store.latest_risk(**which)
    now = max((r["ts"] for r in rows), default=0.0)
    states = runtime.store.node_states()
    return [_risk_view(r, states.get(r["node"]), now) for r in rows]


def node_risk(*, runtime: Runtime, node: str) -> dict[str, Any] | None:
    if runtime.scorer is None:
        return next(iter(_stored_risk(runtime=runtime, node=node)), None)
    row = runtime.scorer.latest.get(node)
    if row is None:
        return None
    states = runtime.store.node_states()
    return _risk_view(row, states.get(node), runtime.scorer.engine.fleet_now())


def node_history(*, runtime: Runtime, node: str, since: float, limit: int) -> list[dict[str, Any]]:
    frame = runtime.store.risk_history(node, since=since, limit=limit)
    frame["p_fail"] = frame["p_fail"].astype(float).replace({np.nan: None})
    return frame.to_dict("records")


def undrain_node(*, runtime: Runtime, node: str, reason: str) -> dict[str, Any]:
    state = runtime.store.node_states().get(node)
    if not state or state["state"] != DRAINED:
        raise LookupError(f"node {node} is not drained")
    if runtime.scorer is None:
        # The owning worker learns it from the node's state, as after any manual undrain.
        policy = Policy(
            settings=runtime.settings, store=runtime.store, actuator=make_actuator(runtime.settings)
        )
        latest = runtime.store.latest_risk(node=node)
        return policy.undrain(
            node, reason=f"manual: {reason}", ts=latest[0]["ts"] if latest else state["since"]
        )
    with runtime.scorer.lock:
        return runtime.scorer.policy.undrain(
            node, reason=f"manual: {reason}", ts=runtime.scorer.engine.fleet_now()
        )


def health(*, runtime: Runtime) -> dict[str, Any]:
    """What /readyz reports; ``ready`` when this role can do its work."""
    store_ok = runtime.store.ping()
    if runtime.publisher is not None:
        leases = runtime.store.leases()
        return {
            "ready": store_ok and runtime.publisher.connected,
            "role": "api",
            "store": store_ok,
            "stream_connected": runtime.publisher.connected,
            "partitions": runtime.settings.stream_partitions,
            "partitions_owned": sum(lease["expires_in_s"] > 0 for lease in leases),
            "workers": sorted({lease["worker"] for lease in leases if lease["expires_in_s"] > 0}),
        }
    if runtime.scorer is None:  # an api process beside a scorer process
        return {
            "ready": store_ok,
            "role": "api",
            "store": store_ok,
            "scoring_lag_rows": scoring_lag_rows(runtime=runtime),
        }
    alive = runtime.thread is not None and runtime.thread.is_alive()
    return {
        "ready": store_ok and alive,
        "role": runtime.settings.role,
        "store": store_ok,
        "model": runtime.model_version,
        "model_refused": runtime.model_refused,
        "scoring_lag_rows": runtime.scorer.lag_rows(),
        "scorer_alive": alive,
    }


def run_scorer(settings: Settings) -> None:
    """``predictor serve --role scorer``: follow the store's log until SIGTERM/SIGINT.

    Beside one or more ``--role api`` processes on the same store, so that parsing and
    committing ingest and scoring run on different cores.
    """
    import signal

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    runtime = Runtime.build(settings)
    runtime.start()
    assert runtime.scorer is not None
    logger.info("scorer process following the store from sample %d", runtime.scorer.scored_rowid)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        runtime.stop()  # scores what was committed, checkpoints


__all__ = [
    "EVENT_KINDS",
    "IngestError",
    "Overloaded",
    "Runtime",
    "fleet_risk",
    "health",
    "ingest_json",
    "ingest_otlp",
    "ingest_remote_write",
    "ingest_samples",
    "ingest_slot",
    "node_history",
    "node_risk",
    "put_node",
    "run_scorer",
    "scoring_lag_rows",
    "record_events",
    "undrain_node",
]
