"""Shared pieces of the benchmarks: synthetic fleets, a real server process, timing."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import orjson

from predictor.ingest.batch import SampleBatch
from predictor.ingest.json_format import node_groups

# The dev environment's API key (see the auth settings); harmless where auth is off.
HEADERS = {"Authorization": "Bearer dev"}
STEP_S = 10.0


def node_names(n_nodes: int) -> np.ndarray:
    return np.array([f"node-{i:06d}" for i in range(n_nodes)], dtype=object)


def metric_names(n_metrics: int) -> np.ndarray:
    return np.array([f"metric_{j:02d}" for j in range(n_metrics)], dtype=object)


def fleet_step(
    n_nodes: int, n_metrics: int, step: int, *, t0: float, rng: np.random.Generator
) -> SampleBatch:
    """One scrape of every node's every metric at ``t0 + step * STEP_S`` (jittered < 1 s).

    Values are Gaussian noise around a per-series level, so the detectors do real work
    (no shortcut for constant series) and the batch is in node-major order, as a scraper
    would send it.
    """
    size = n_nodes * n_metrics
    nodes = np.repeat(node_names(n_nodes), n_metrics)
    metrics = np.tile(metric_names(n_metrics), n_nodes)
    level = np.arange(size) % 97 * 0.1  # fixed per series
    ts = t0 + step * STEP_S + rng.uniform(0.0, 1.0, size)
    value = level + rng.normal(0.0, 1.0, size)
    return SampleBatch.from_columns(nodes, metrics, ts, value)


def request_parts(batch: SampleBatch, per_request: int) -> Iterator[SampleBatch]:
    """``batch`` in consecutive parts of ``per_request`` samples (views, not copies)."""
    for start in range(0, len(batch), per_request):
        part = slice(start, start + per_request)
        yield SampleBatch(batch.node[part], batch.metric[part], batch.ts[part], batch.value[part])


def json_bodies(batch: SampleBatch, per_request: int) -> list[bytes]:
    """``POST /v1/metrics`` bodies of ``per_request`` samples each (encoded before timing)."""
    bodies = []
    for part in request_parts(batch, per_request):
        samples = [
            {"node": n, "metric": m, "ts": t, "value": v}
            for n, m, t, v in zip(
                part.node.tolist(), part.metric.tolist(), part.ts.tolist(), part.value.tolist(),
                strict=True,
            )
        ]  # fmt: skip
        bodies.append(orjson.dumps({"samples": samples}))
    return bodies


def json_group_bodies(batch: SampleBatch, per_request: int) -> list[bytes]:
    """The same samples as :func:`json_bodies` in the per-node shape an agent sends its
    scrape in, each node's run stamped with its first sample's time (see ``fleet_step``)."""
    first = np.flatnonzero(np.r_[True, batch.node[1:] != batch.node[:-1]])
    run_ts = np.repeat(batch.ts[first], np.diff(np.r_[first, len(batch)]))
    stamped = SampleBatch(batch.node, batch.metric, run_ts, batch.value)
    return [orjson.dumps(node_groups(part)) for part in request_parts(stamped, per_request)]


@dataclass
class SendStats:
    seconds: float
    requests: int
    retries: int
    client_cpu_s: float  # CPU the sending process spent: it shares this machine's cores


def send_all(
    base_url: str,
    path: str,
    bodies: list[bytes],
    *,
    headers: dict[str, str],
    connections: int = 16,  # concurrent senders, as Prometheus remote_write shards are
) -> SendStats:
    """POST every body over ``connections`` keep-alive connections; 503s are retried.

    The standard library's ``http.client``: httpx spent 2.5 cpu-s per 1M samples here
    against 0.45, CPU taken from the server under test on a two-core machine.
    """
    url = urlsplit(base_url)
    request_headers = {**HEADERS, **headers}

    def worker(chunk: list[bytes]) -> int:
        local_retries = 0
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=120.0)
        try:
            for body in chunk:
                while True:
                    connection.request("POST", path, body=body, headers=request_headers)
                    response = connection.getresponse()
                    content = response.read()
                    if response.status != 503:
                        if response.status >= 400:
                            raise RuntimeError(f"{path}: {response.status} {content[:200]!r}")
                        break
                    local_retries += 1
                    time.sleep(float(response.getheader("Retry-After", "1")))
        finally:
            connection.close()
        return local_retries

    chunks = [bodies[i::connections] for i in range(connections)]
    cpu_started, started = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(connections) as pool:
        retries = sum(pool.map(worker, chunks))
    seconds = time.perf_counter() - started
    return SendStats(seconds, len(bodies), retries, time.process_time() - cpu_started)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running ``uvicorn`` process serving the predictor app."""

    base_url: str
    process: subprocess.Popen[bytes]
    workdir: Path
    scorer: subprocess.Popen[bytes] | None = None  # the `--role scorer` process, if split

    def peak_rss_mib(self) -> float:
        """Peak resident memory of the server's processes (VmHWM), summed."""
        total_kib = 0
        for child in (self.process, self.scorer):
            if child is not None:
                status = Path(f"/proc/{child.pid}/status").read_text()
                total_kib += int(status.split("VmHWM:")[1].split()[0])
        return total_kib / 1024

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=120.0, headers=HEADERS)

    def lag_rows(self, client: httpx.Client) -> int:
        return int(client.get("/readyz").json()["scoring_lag_rows"])

    def wait_scored(self, client: httpx.Client, timeout_s: float, poll_s: float = 0.05) -> bool:
        """Wait until the scorer has caught up with the log; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.lag_rows(client) == 0:
                return True
            time.sleep(poll_s)
        return False

    def has_route(self, path: str) -> bool:
        with self.client() as client:
            spec = client.get("/openapi.json").json()
        return path in spec.get("paths", {})


@contextmanager
def running_server(
    workdir: Path, *, split: bool = False, api_workers: int = 1, **settings: str
) -> Iterator[Server]:
    """Start the API and scorer in a subprocess on a free port; stop it afterwards.

    ``split``: an ``--role api`` process (``api_workers`` of them) and a ``--role scorer``
    process on the one store (ingest and scoring on different cores). ``settings`` become
    ``PREDICTOR_<NAME>`` environment variables of the server.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **os.environ,
        "PREDICTOR_DB": str(workdir / "predictor.db"),
        "PREDICTOR_MODELS_DIR": str(workdir / "models"),
        "PREDICTOR_STATE_PATH": str(workdir / "state.joblib"),
        **{f"PREDICTOR_{k.upper()}": v for k, v in settings.items()},
    }
    command = [
        sys.executable, "-m", "uvicorn", "predictor.api.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        "--workers", str(api_workers),
    ]  # fmt: skip
    scorer = None
    if split:
        env["PREDICTOR_ROLE"] = "api"
        scorer_command = [sys.executable, "-m", "predictor.cli", "serve", "--role", "scorer"]
        scorer = subprocess.Popen(scorer_command, env=env, cwd=workdir)
    process = subprocess.Popen(command, env=env, cwd=workdir)
    server = Server(f"http://127.0.0.1:{port}", process, workdir, scorer)
    try:
        _wait_ready(server)
        yield server
    finally:
        for child in (process, scorer):
            if child is None:
                continue
            child.terminate()
            try:
                child.wait(timeout=120)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _wait_ready(server: Server, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}")
        try:
            if httpx.get(server.base_url + "/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("server did not become ready")


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "n": len(ms),
    }
