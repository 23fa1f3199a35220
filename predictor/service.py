"""The service's parts wired together, and the keyword-only functions routes call."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from predictor.actuators import Actuator, make_actuator
from predictor.config import Settings
from predictor.ingest import Limits, SampleBatch, parse_metrics_json
from predictor.ingest.json_format import IngestError
from predictor.policy import DRAINED, Policy
from predictor.scoring import ScoringEngine
from predictor.scoring.scorer import Scorer, ScorerThread
from predictor.store import Store
from predictor.training import ModelError, ModelRegistry

logger = logging.getLogger(__name__)
EVENT_KINDS = ("failure", "recovery", "maintenance")


class Overloaded(Exception):
    """The scorer is too far behind; the client should retry later (503)."""

    def __init__(self, retry_after_s: int):
        super().__init__(f"scoring backlog is full; retry in {retry_after_s}s")
        self.retry_after_s = retry_after_s


@dataclass
class Runtime:
    """Everything one running service holds."""

    settings: Settings
    store: Store
    scorer: Scorer
    registry: ModelRegistry
    model_version: str | None = None
    thread: ScorerThread | None = None
    started: float = field(default_factory=time.time)

    @classmethod
    def build(cls, settings: Settings, *, actuator: Actuator | None = None) -> Runtime:
        store = Store(settings.db)
        if not settings.dry_run:
            store.clear_dry_run_states()
        registry = ModelRegistry(settings.models_dir)
        model, version = None, None
        try:
            loaded = registry.load_current()
            if loaded:
                model, manifest = loaded
                version = manifest["version"]
        except ModelError as exc:
            logger.error("no batch model in service: %s", exc)
        engine = ScoringEngine(settings=settings, model=model)
        policy = Policy(
            settings=settings, store=store, actuator=actuator or make_actuator(settings)
        )
        scorer = Scorer(
            store=store, engine=engine, policy=policy, checkpoint_path=settings.checkpoint_path
        )
        if scorer.restore():
            engine.set_model(model)  # the checkpoint holds online state, not the model
        return cls(
            settings=settings, store=store, scorer=scorer, registry=registry, model_version=version
        )

    def start(self) -> None:
        self.thread = ScorerThread(
            self.scorer,
            checkpoint_every_s=self.settings.checkpoint_every_s,
            chunk_rows=self.settings.scoring_chunk_rows,
        )
        self.thread.start()

    def stop(self) -> None:
        if self.thread is not None:
            self.thread.stop()
            self.thread = None
        self.store.close()

    def notify(self) -> None:
        if self.thread is not None:
            self.thread.wake.set()


# -- ingest ------------------------------------------------------------------------------
def ingest_samples(*, runtime: Runtime, batch: SampleBatch) -> int:
    """Commit a validated batch durably, then wake the scorer; return its size."""
    lag = runtime.scorer.lag_rows()
    if lag > runtime.settings.max_unscored_rows:
        raise Overloaded(retry_after_s=max(1, math.ceil(lag / 200_000)))
    if len(batch):
        runtime.store.append_samples(batch)
        runtime.notify()
    return len(batch)


def ingest_json(*, runtime: Runtime, body: bytes) -> int:
    s = runtime.settings
    limits = Limits(
        max_samples=s.max_samples_per_request, now=time.time(),
        future_tolerance_s=s.future_tolerance_s,
    )  # fmt: skip
    return ingest_samples(runtime=runtime, batch=parse_metrics_json(body, limits))


def record_events(*, runtime: Runtime, events: list[dict[str, Any]]) -> int:
    runtime.store.add_events(events)
    return len(events)


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
    latest = runtime.scorer.latest
    now = runtime.scorer.engine.fleet_now()
    states = runtime.store.node_states()
    rows = sorted(latest.values(), key=lambda r: -r["risk"])[:top]
    return [_risk_view(r, states.get(r["node"]), now) for r in rows]


def node_risk(*, runtime: Runtime, node: str) -> dict[str, Any] | None:
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
    with runtime.scorer.lock:
        return runtime.scorer.policy.undrain(
            node, reason=f"manual: {reason}", ts=runtime.scorer.engine.fleet_now()
        )


def health(*, runtime: Runtime) -> dict[str, Any]:
    return {
        "store": runtime.store.ping(),
        "model": runtime.model_version,
        "scoring_lag_rows": runtime.scorer.lag_rows(),
        "scorer_alive": runtime.thread is not None and runtime.thread.is_alive(),
    }


__all__ = [
    "EVENT_KINDS",
    "IngestError",
    "Overloaded",
    "Runtime",
    "fleet_risk",
    "health",
    "ingest_json",
    "ingest_samples",
    "node_history",
    "node_risk",
    "put_node",
    "record_events",
    "undrain_node",
]
