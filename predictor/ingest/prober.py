"""Active health checks: probe each node's health-check URL and record the outcome.

The classic failure detector, as two metrics per node: ``probe_up`` (1 answered 2xx/3xx,
0 otherwise) and ``probe_latency_s``. They go through the same store and scorer as any
other metric, so a node that stops answering raises its risk like any other signal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx

from predictor.ingest.batch import SampleBatch

logger = logging.getLogger(__name__)


async def probe_once(
    targets: dict[str, str], *, client: httpx.AsyncClient, timeout_s: float
) -> SampleBatch:
    """Probe every ``node -> url`` concurrently; return their up/latency samples."""

    async def probe(url: str) -> tuple[float, float]:
        started = time.perf_counter()
        try:
            response = await client.get(url, timeout=timeout_s)
            up = 1.0 if response.status_code < 400 else 0.0
        # A malformed URL is that node's probe failing, not the whole round's.
        except (httpx.HTTPError, httpx.InvalidURL, UnicodeError):
            up = 0.0
        return up, time.perf_counter() - started

    nodes = list(targets)
    results = await asyncio.gather(*(probe(targets[n]) for n in nodes))
    now = time.time()  # wall clock: this is where the world enters
    return SampleBatch.from_columns(
        [n for n in nodes for _ in range(2)],
        ["probe_up", "probe_latency_s"] * len(nodes),
        [now] * (2 * len(nodes)),
        [v for up, latency in results for v in (up, latency)],
    )


async def run_prober(
    *,
    targets: Callable[[], dict[str, str]],
    record: Callable[[SampleBatch], object],
    interval_s: float,
    timeout_s: float,
) -> None:
    """Probe every ``interval_s`` until cancelled."""
    async with httpx.AsyncClient() as client:
        while True:
            try:
                current = targets()
                if current:
                    batch = await probe_once(current, client=client, timeout_s=timeout_s)
                    await asyncio.to_thread(record, batch)
            except Exception:  # a probe round failing must not end probing
                logger.exception("health-check round failed")
            await asyncio.sleep(interval_s)
