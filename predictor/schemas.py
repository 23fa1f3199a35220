"""API models (pydantic). Hot-path metric bodies are parsed by :mod:`predictor.ingest`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from predictor.ingest.json_format import NAME_PATTERN, parse_ts

NodeName = Field(pattern=NAME_PATTERN.pattern)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Sample(Strict):
    node: str = NodeName
    metric: str = NodeName
    ts: float | str
    value: float
    labels: dict[str, str] | None = None


class MetricsBatch(Strict):
    """Documentation of the ``POST /v1/metrics`` body (also accepts the compact form)."""

    samples: list[Sample]


class CompactSamples(Strict):
    node: str = NodeName
    ts: float | str
    values: dict[str, float]
    labels: dict[str, str] | None = None


class Accepted(BaseModel):
    accepted: int


class NodeMeta(Strict):
    pool: str = Field(default="default", pattern=NAME_PATTERN.pattern)
    lb_backend: str | None = None
    lb_server: str | None = None
    standby: str | None = Field(default=None, pattern=NAME_PATTERN.pattern)
    health_url: str | None = Field(default=None, pattern=r"^https?://")
    labels: dict[str, str] = {}

    @field_validator("labels")
    @classmethod
    def _labels_are_storable(cls, labels: dict[str, str]) -> dict[str, str]:
        for text in (*labels, *labels.values()):
            text.encode()  # lone surrogates raise here (a 422), not in the store (a 500)
        return labels


class NodeOut(NodeMeta):
    node: str


class Event(Strict):
    node: str = NodeName
    ts: float
    kind: Literal["failure", "recovery", "maintenance"]
    reason: str = Field(default="", max_length=1000)

    @field_validator("ts", mode="before")
    @classmethod
    def _ts(cls, value: Any) -> float:
        return parse_ts(value)


class EventsIn(Strict):
    events: list[Event] = Field(max_length=10_000)


class WhyItem(BaseModel):
    metric: str
    score: float
    z: float | None = None
    value: float | None = None
    # failure_model only: the part of its P(fail) counted in risk (the evidence gate).
    counted: float | None = None


class RiskFields(BaseModel):
    """One node evaluation (see the fusion in :mod:`predictor.scoring.engine`)."""

    ts: float
    risk: float
    online: float
    batch: float
    p_fail: float | None
    trend: float


class RiskOut(RiskFields):
    node: str
    why: list[WhyItem]
    staleness_s: float
    state: str


class RiskPoint(RiskFields):
    why: str  # the stored JSON of the why list


class ActionOut(BaseModel):
    id: int
    ts: float
    node: str
    pool: str
    action: str
    reason: str
    risk: float | None
    executed: bool
    dry_run: bool
    status: str
    detail: str
    wall_ts: float


class UndrainIn(Strict):
    reason: str = Field(default="operator override", max_length=1000)


class Health(BaseModel):
    store: bool
    model: str | None
    scoring_lag_rows: int
    scorer_alive: bool


Kind = Literal["failure", "recovery", "maintenance"]


class AlertmanagerAlert(BaseModel):
    """One alert of an Alertmanager webhook (version 4); extra fields are ignored."""

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = {}
    startsAt: str
    endsAt: str = "0001-01-01T00:00:00Z"
    fingerprint: str = Field(min_length=1, max_length=200)

    @field_validator("startsAt", "endsAt")
    @classmethod
    def _rfc3339(cls, value: str) -> str:
        parse_ts(value)
        return value


class AlertmanagerWebhook(BaseModel):
    """Alertmanager's webhook body (``version: "4"``)."""

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    alerts: list[AlertmanagerAlert] = Field(max_length=10_000)
