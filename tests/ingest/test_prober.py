"""Active health checks against a real local HTTP server."""

from __future__ import annotations

import asyncio
from http.server import BaseHTTPRequestHandler

import httpx

from predictor.ingest.prober import probe_once
from tests.server_process import serving


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200 if self.path == "/ok" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_probe_records_up_down_and_latency_for_each_node() -> None:
    async def run(targets: dict[str, str]):
        async with httpx.AsyncClient() as client:
            return await probe_once(targets, client=client, timeout_s=2.0)

    with serving(Handler) as base:
        targets = {"good": f"{base}/ok", "sick": f"{base}/bad", "gone": "http://127.0.0.1:9/"}
        batch = asyncio.run(run(targets))
    frame = batch.to_frame().pivot(index="node", columns="metric", values="value")
    assert frame.loc["good", "probe_up"] == 1.0
    assert frame.loc["sick", "probe_up"] == 0.0
    assert frame.loc["gone", "probe_up"] == 0.0  # refused connection: down, not a crash
    assert (frame["probe_latency_s"] >= 0).all()
    assert batch.ts.min() == batch.ts.max()


def test_a_malformed_health_url_is_that_node_down_not_a_failed_round() -> None:
    targets = {
        "bracket": "http://[::1", "port": "http://a:b/", "newline": "http://a/\n",
        "surrogate": "http://\ud800/", "gone": "http://127.0.0.1:9/",
    }  # fmt: skip

    async def run():
        async with httpx.AsyncClient() as client:
            return await probe_once(targets, client=client, timeout_s=2.0)

    frame = asyncio.run(run()).to_frame().pivot(index="node", columns="metric", values="value")
    assert set(frame.index) == set(targets)
    assert (frame["probe_up"] == 0.0).all()
