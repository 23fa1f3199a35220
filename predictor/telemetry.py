"""The service's own Prometheus metrics, in a registry per runtime (no global state).

Counters are updated where things happen (ingest); everything that the runtime already
knows — backlog, event-time position, model, actions, each node's risk — is read at
scrape time by :class:`RuntimeCollector`, so it can never drift from the truth.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from predictor.service import Runtime

# Request paths whose answers are counted, by the wire format they speak.
INGEST_PATHS = {"/v1/metrics": "json", "/api/v1/write": "remote_write", "/v1/otlp/metrics": "otlp"}


class Telemetry:
    """One registry with the ingest counters; :meth:`watch` adds the scrape-time view.

    >>> t = Telemetry()
    >>> t.record_ingest("json", count=3, newest_ts=10.0)
    >>> t.registry.get_sample_value("predictor_ingested_samples_total", {"format": "json"})
    3.0
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.ingested = Counter(
            "predictor_ingested_samples",
            "Samples committed to the store, by wire format.",
            ["format"],
            registry=self.registry,
        )
        self.skipped = Counter(
            "predictor_ingest_skipped_samples",
            "Samples received but not stored (stale markers, NaN, no node label, ...).",
            ["format", "reason"],
            registry=self.registry,
        )
        self.requests = Counter(
            "predictor_ingest_requests",
            "Ingest requests answered, by wire format and HTTP status code.",
            ["format", "code"],
            registry=self.registry,
        )
        self._lock = threading.Lock()
        self.newest_ingested_ts = 0.0  # event time of the newest committed sample

    def record_ingest(self, fmt: str, *, count: int, newest_ts: float) -> None:
        self.ingested.labels(fmt).inc(count)
        with self._lock:
            self.newest_ingested_ts = max(self.newest_ingested_ts, newest_ts)

    def record_skipped(self, fmt: str, skipped: Mapping[str, int]) -> None:
        for reason, count in skipped.items():
            self.skipped.labels(fmt, reason).inc(count)

    def watch(self, runtime: Runtime) -> None:
        """Expose ``runtime``'s state at every scrape."""
        self.registry.register(RuntimeCollector(runtime, self))


class RuntimeCollector(Collector):
    """Reads the runtime when scraped: backlog, lag, model, actions, per-node risk."""

    def __init__(self, runtime: Runtime, telemetry: Telemetry):
        self.runtime = runtime
        self.telemetry = telemetry

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        yield from self._actions_and_risk(rt)
        if rt.scorer is None:  # an api replica: the workers' lag is the stream's to report
            return
        lag_rows = rt.scorer.lag_rows()
        scored_until = rt.scorer.engine.fleet_now()
        yield GaugeMetricFamily(
            "predictor_scoring_lag_rows",
            "Committed samples the scorer has not folded in yet (the ingest queue depth).",
            value=lag_rows,
        )
        # Event time, like every duration here: how far the newest committed sample is
        # ahead of the scorer's position. 0 when caught up, whatever the wall clock says.
        lag_s = max(0.0, self.telemetry.newest_ingested_ts - scored_until) if lag_rows else 0.0
        yield GaugeMetricFamily(
            "predictor_scoring_lag_seconds",
            "Event-time distance between the newest committed sample and the scorer.",
            value=lag_s,
        )
        yield GaugeMetricFamily(
            "predictor_scored_until_timestamp_seconds",
            "Event time (unix seconds) up to which the fleet has been scored.",
            value=scored_until,
        )
        info = GaugeMetricFamily(
            "predictor_model_info", "The batch model in service (version 'none': online only).",
            labels=["version"],
        )  # fmt: skip
        info.add_metric([rt.model_version or "none"], 1.0)
        yield info

    def _actions_and_risk(self, rt: Runtime) -> Iterator[Metric]:
        actions = CounterMetricFamily(
            "predictor_actions",
            "Policy decisions in the audit log, by action and status (dry-run, done, ...).",
            labels=["action", "status"],
        )
        for (action, status), count in sorted(rt.store.action_counts().items()):
            actions.add_metric([action, status], count)
        yield actions

        nodes = rt.store.nodes()
        risk = GaugeMetricFamily(
            "predictor_node_risk", "Each node's latest fused risk in [0, 1].",
            labels=["node", "pool"],
        )  # fmt: skip
        if rt.scorer:  # the risk column, not a row dict per node
            risk_of = rt.scorer.latest.risk_by_node()
        else:
            risk_of = {r["node"]: float(r["risk"]) for r in rt.store.latest_risk()}
        for node, value in sorted(risk_of.items()):
            pool = (nodes.get(node) or {}).get("pool") or "default"
            risk.add_metric([node, pool], value)
        yield risk
