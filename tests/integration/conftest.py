"""A real uvicorn server on a free loopback port, for tests that drive real clients."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

STARTUP_DEADLINE_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _serve(app: FastAPI) -> Iterator[str]:
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def serve() -> Callable[[FastAPI], AbstractContextManager[str]]:
    """``with serve(app) as base_url:`` runs ``app`` on 127.0.0.1 until the block ends."""
    return _serve


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A function returning a loopback port that is free right now."""
    return _free_port


def _wait_until(
    check: Callable[[], Any],
    *,
    deadline_s: float = 60.0,
    what: str = "",
    log: Path | None = None,
) -> Any:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        result = check()
        if result is not None and result is not False:
            return result
        time.sleep(0.1)
    # The tail of a real program's log usually says why it never got there.
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(
        f"timed out waiting for {what or check}" + (f"; log:\n{tail}" if tail else "")
    )


@pytest.fixture
def wait_until() -> Callable[..., Any]:
    """Poll ``check`` until it returns something, or fail after a generous deadline."""
    return _wait_until
