"""Run `predictor serve` as a real process on loopback, for crash, load and shutdown tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

# The documented dev key: accepted in env=dev once API-key auth is on, ignored before it.
DEV_AUTH = {"Authorization": "Bearer dev"}


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` behind a threading HTTP server on a free loopback port; yields its URL.

    For the fakes that stand in for what cannot run here (webhook receivers, a Kubernetes
    API server, load-balancer backends, health endpoints).
    """
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM, and SIGKILL if it has not exited within ``timeout_s``."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One `python -m predictor.cli serve` child; ``env`` adds PREDICTOR_* settings.

    ``role="worker"`` (scale-out) and ``role="scorer"`` run without an HTTP port.
    """

    def __init__(
        self,
        tmp: Path,
        *,
        db: Path | None,  # None: the store named by PREDICTOR_DATABASE_URL
        env: dict[str, str] | None = None,
        role: str = "all",
        name: str = "server",
    ):
        self.tmp, self.db, self.role = tmp, db, role
        self.env = {
            **os.environ,
            "PREDICTOR_ENV": "dev",
            "PREDICTOR_MODELS_DIR": str(tmp / "models"),
            "PREDICTOR_PROBE_INTERVAL_S": "3600",
            **(env or {}),
        }
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / f"{name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, startup_timeout_s: float = 120.0) -> None:
        """Start and wait until /readyz answers 200 (the scorer thread is running)."""
        self.port = free_port()
        cmd = [sys.executable, "-m", "predictor.cli", "serve", "--port", str(self.port)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*cmd, *(["--db", str(self.db)] if self.db else []), "--role", self.role],
                env=self.env, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        if self.role in ("worker", "scorer"):
            return  # no HTTP: the test watches what it writes to the store
        deadline = time.monotonic() + startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", headers=DEV_AUTH, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server did not become ready:\n{self.log.read_text()[-3000:]}")

    def ready(self) -> dict:
        return httpx.get(f"{self.url}/readyz", headers=DEV_AUTH, timeout=10).json()

    def wait_scored(self, timeout_s: float = 120.0) -> dict:
        """Poll /readyz until the scorer has folded in every stored sample."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.ready()
            if status.get("scoring_lag_rows") == 0:
                return status
            time.sleep(0.1)
        raise AssertionError(f"scorer did not catch up: {status}")

    def children(self) -> list[int]:
        """Process ids of the server's child processes (e.g. API workers)."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(pid) for pid in path.read_text().split()]

    def rss_kib(self) -> int:
        """Resident set size of the server process, from /proc/<pid>/status."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS line")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, like a crash or the OOM killer."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # with any worker processes it started
            self.proc.wait(timeout=30)

    def terminate(self, timeout_s: float = 120.0) -> int:
        """SIGTERM and wait for the graceful shutdown; return the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)
