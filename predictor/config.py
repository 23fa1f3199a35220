"""One settings object for the whole service (environment prefix ``PREDICTOR_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every tunable of the service; each is also settable as ``PREDICTOR_<NAME>``.

    >>> Settings(port=9000).port
    9000
    """

    model_config = SettingsConfigDict(env_prefix="PREDICTOR_", extra="ignore")

    env: Literal["dev", "prod"] = "dev"
    host: str = "127.0.0.1"
    port: int = 8000
    db: Path = Path("data/predictor.db")
    # postgresql://user@host:port/dbname shares one store between processes; unset: the
    # SQLite file at `db` (sqlite:///path is also accepted).
    database_url: str | None = None
    models_dir: Path = Path("models")
    state_path: Path | None = Field(
        default=None, description="Online-state checkpoint; defaults to <db>.state.joblib"
    )
    log_json: bool = False  # `predictor serve` logs one JSON object per line

    # Ingest
    max_samples_per_request: int = 100_000
    max_body_bytes: int = 32 * 1024 * 1024
    max_unscored_rows: int = 2_000_000  # past this backlog ingest answers 503 + Retry-After
    future_tolerance_s: float = 3600.0
    max_inflight_ingest: int = 64  # ingest requests handled at once; past it 503 + Retry-After
    remote_write_node_label: str = "instance"  # the Prometheus label whose value names the node
    # OTLP resource attributes that name the node, first one set wins.
    otlp_node_attributes: list[str] = ["service.instance.id", "host.name"]
    metrics_public: bool = False  # GET /metrics without an API key (else the `read` scope)

    # Scoring
    online_detectors: list[str] = ["ewma_z"]
    # Detectors whose score is accumulated evidence (a sustained trend, growing gaps): they
    # enter risk at full weight, see predictor.scoring.engine.
    evidence_detectors: list[str] = ["breakout"]
    # Evidence detectors see a series' samples about this many seconds apart (at most one
    # per 0.9 of it): their windows count samples, and a trend unfolds over minutes, so a
    # 10 s or a 60 s scrape interval gives them the same series. 0 feeds every sample.
    evidence_step_s: float = 60.0
    eval_step_s: float = 10.0  # event-time bucket in which a node is evaluated once
    scoring_chunk_rows: int = 200_000
    checkpoint_every_s: float = 30.0  # wall-clock: how often the online state is saved
    # Event time behind the newest sample after which scored samples and risk history are
    # deleted (checked at each checkpoint); 0 keeps everything. Keep it above the training
    # window you retrain on.
    retention_days: float = 0.0
    # Event-time spacing of the stored risk history (0: every evaluation). The latest risk
    # of each node is always kept; big fleets want e.g. 60 (100k nodes every 10 s is 860M
    # history rows a day).
    risk_history_every_s: float = 0.0
    batch_weight: float = 0.5  # share of the batch anomaly score in the anomaly part of risk
    anomaly_weight_with_classifier: float = 0.5
    # The failure model's P(fail) counts in full only once the node's own series show this
    # much evidence (scaled down linearly below it; 0 = always in full). It learnt from
    # other nodes: a healthy node unlike them (a tight baseline under a batch job) can look
    # like a failing one, while a failure it foresees also builds evidence on the node.
    classifier_evidence_gate: float = Field(default=0.3, ge=0.0, le=1.0)

    # Policy
    dry_run: bool = True
    enter_threshold: float = 0.8
    exit_threshold: float = 0.4
    min_duration_s: float = 60.0
    cooldown_s: float = 900.0
    recovery_s: float = 600.0  # sustained low risk before an automatic undrain
    auto_undrain: bool = True
    budget_max_nodes: int = 2
    budget_max_fraction: float = 0.25
    stale_after_s: float = 120.0
    # A node silent for longer (a reboot, an outage) starts its drain episode and its
    # recovery again on what it reports once back. Longer than a patchy node's gaps
    # between evaluations: those gaps are its symptom.
    silence_s: float = 300.0
    failsafe_stale_fraction: float = 0.5
    failsafe_spike_fraction: float = 0.5
    # A drain waits while this share of its pool's reporting nodes (3 at least) rose to the
    # exit threshold within the window: a deploy or a shared dependency, not this node.
    # Above 1: never.
    pool_wide_fraction: float = 0.5
    pool_wide_window_s: float = 300.0
    weight_actions: bool = False  # lower LB weight as risk rises (needs a weight-capable actuator)

    # Actuators
    actuator: Literal["log", "webhook", "haproxy", "kubernetes"] = "log"
    webhook_url: str | None = None
    # Labels that name the node in Alertmanager alerts received on /v1/alertmanager.
    alertmanager_node_labels: list[str] = ["node", "instance", "host"]
    actuator_timeout_s: float = 5.0
    actuator_retries: int = 3
    # HAProxy runtime API (admin level): a unix socket path or host:port
    haproxy_socket: str | None = None
    haproxy_failover_state: Literal["drain", "maint"] = "drain"  # maint: hard cut on failover
    # Kubernetes: k8s_api_url (no auth, e.g. kubectl proxy) wins over k8s_kubeconfig, which
    # wins over the in-cluster service account (then ~/.kube/config)
    k8s_api_url: str | None = None
    k8s_kubeconfig: Path | None = None
    k8s_evict_deadline_s: float = 300.0  # wall-clock: how long PDBs may hold up a drain
    k8s_evict_backoff_s: float = 1.0  # first wait after a 429; doubles up to 10 s

    # Roles (see README "Scaling out"): "all" is one process, API and scorer. "api" without
    # a stream commits to the store and a "scorer" process follows it (two cores, one
    # machine); "api" with nats_url publishes to the stream, whose partitions "worker"s own.
    role: Literal["all", "api", "scorer", "worker"] = "all"
    # Processes serving an "api" role's HTTP port (uvicorn workers): ingest parses JSON and
    # protobuf in Python, one core per process.
    api_workers: int = Field(default=1, ge=1)
    nats_url: str | None = None  # e.g. nats://127.0.0.1:4222; required by the api/worker roles
    stream_name: str = "predictor-samples"
    stream_subject: str = "predictor.samples"  # partition p is published to <subject>.<p>
    stream_partitions: int = Field(default=16, ge=1)  # fixed for a stream's lifetime
    # -1: bounded by the server's JetStream storage; full: ingest answers 503, nothing is dropped
    stream_max_bytes: int = -1
    stream_max_age_s: float = 7 * 86400.0  # must exceed the longest worker outage
    stream_duplicate_window_s: float = 120.0  # a resent batch inside it is stored once
    publish_timeout_s: float = 10.0
    worker_id: str | None = None  # defaults to <hostname>-<pid>
    lease_ttl_s: float = 10.0  # a dead worker's partitions are taken over after this
    worker_fetch_messages: int = 256  # stream messages fetched per partition and step

    # Health checks
    probe_interval_s: float = 10.0
    probe_timeout_s: float = 2.0

    # Training
    # The classifier learns P(failure within horizon_s). Precursors run for tens of minutes
    # to hours: a 2 h horizon labels most of a long one as failing (1 h taught it that the
    # start of one is healthy); the evidence gate (classifier_evidence_gate) keeps out the
    # false alarms a longer horizon adds.
    horizon_s: float = 7200.0
    train_step_s: float = 60.0
    # Cores that training uses (IsolationForest, HistGradientBoosting's OpenMP); -1 = all.
    train_n_jobs: int = -1
    seed: int = 0
    # Signs model manifests (HMAC-SHA256). Required in prod; dev falls back to DEV_MODEL_HMAC_KEY.
    model_hmac_key: str | None = None

    # Access (API keys live hashed in the store; see predictor/auth.py)
    # A documented admin key for local work, accepted only when env == "dev"; "" turns it off.
    dev_api_key: str | None = "dev"

    @model_validator(mode="after")
    def _workers_need_the_api_role(self) -> Settings:
        if self.api_workers > 1 and self.role != "api":
            raise ValueError(
                "api_workers > 1 needs role 'api' (role 'all' scores inside the API process;"
                " run a 'scorer' or scale-out workers beside the API processes)"
            )
        return self

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, url: str | None) -> str | None:
        from predictor.store import check_database_url

        return check_database_url(url) if url else None

    @property
    def checkpoint_path(self) -> Path:
        return self.state_path or self.db.with_suffix(".state.joblib")


@lru_cache
def get_settings() -> Settings:
    """The process-wide default; tests build their own ``Settings`` instead."""
    return Settings()
