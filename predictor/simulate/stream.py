"""Stream a simulated fleet to a running predictor API, step by step."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx
import orjson
import pandas as pd

from predictor.ingest.batch import SampleBatch
from predictor.ingest.json_format import node_groups
from predictor.simulate.fleet import FleetSpec, iter_steps, node_registry

MAX_BATCH = 5_000  # samples per POST, by default
_RETRY_STATUSES = (429, 503)
_EVENT_FIELDS = ["node", "ts", "kind", "reason"]

StepCallback = Callable[[float, pd.DataFrame, pd.DataFrame], None]


@dataclass(frozen=True)
class StreamStats:
    """What :func:`stream_to_api` sent: steps, samples, events, and retried requests."""

    steps: int
    samples: int
    events: int
    retries: int


def stream_to_api(
    spec: FleetSpec,
    *,
    base_url: str,
    speed: float = 0.0,
    client: httpx.Client | None = None,
    on_step: StepCallback | None = None,
    stop: threading.Event | None = None,
    max_batch: int = MAX_BATCH,
    api_key: str | None = None,
) -> StreamStats:
    """Register the fleet's nodes, then send its samples and events as simulated time passes.

    Parameters
    ----------
    spec
        The fleet to simulate.
    base_url
        Where the API listens, e.g. ``"http://127.0.0.1:8000"``.
    speed
        Simulated seconds per wall-clock second; 0 sends as fast as possible, packing
        consecutive steps into batches of up to ``max_batch`` samples.
    client
        HTTP client to use (one is created and closed if not given).
    on_step
        Called with ``(ts, samples, events)`` after each step has been handed over.
    stop
        Set it to end the stream early (also interrupts waits and retries).
    max_batch
        Most samples per ``POST /v1/metrics``; a larger step is split.
    api_key
        Sent as ``Authorization: Bearer <key>``; registering nodes needs an admin key,
        samples and events an ingest key.

    Returns
    -------
    StreamStats
        Steps, samples and events handed over, and how many requests were retried.

    Notes
    -----
    A 503 (or 429) answer is retried after its ``Retry-After`` seconds, as many times as it
    takes, so no batch is dropped. Other error statuses raise ``httpx.HTTPStatusError``.
    Events of a step are sent after all samples up to and including that step.
    """
    stop = stop or threading.Event()
    own_client = client is None
    sender = _Sender(client or httpx.Client(timeout=30.0), base_url.rstrip("/"), stop, api_key)
    pending: list[pd.DataFrame] = []
    n_steps = n_samples = n_events = 0

    def flush() -> None:
        if pending:
            batch = pd.concat(pending, ignore_index=True)
            pending.clear()
            for start in range(0, len(batch), max_batch):
                # The per-node shape: a node's scrape in one object, the cheap one to parse.
                part = SampleBatch.from_frame(batch.iloc[start : start + max_batch])
                sender.send("POST", "/v1/metrics", node_groups(part))

    try:
        for node in node_registry(spec).to_dict("records"):
            sender.send("PUT", f"/v1/nodes/{node.pop('node')}", node)
        started = time.monotonic()
        for ts, samples, events in iter_steps(spec):
            if speed > 0:
                due = started + (ts - spec.start_ts) / speed
                if stop.wait(max(0.0, due - time.monotonic())):
                    break
            elif stop.is_set():
                break
            if pending and sum(map(len, pending)) + len(samples) > max_batch:
                flush()
            pending.append(samples)
            if speed > 0 or len(events):
                flush()
            if len(events):
                rows = events[_EVENT_FIELDS].to_dict("records")
                sender.send("POST", "/v1/events", {"events": rows})
            n_steps += 1
            n_samples += len(samples)
            n_events += len(events)
            if on_step is not None:
                on_step(ts, samples, events)
        flush()
    finally:
        if own_client:
            sender.client.close()
    return StreamStats(n_steps, n_samples, n_events, sender.retries)


class _Sender:
    """Sends JSON bodies, waiting out 503/429 answers for as long as it takes."""

    def __init__(
        self, client: httpx.Client, base_url: str, stop: threading.Event, api_key: str | None
    ) -> None:
        self.client = client
        self.base_url = base_url
        self.stop = stop
        self.retries = 0
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def send(self, method: str, path: str, payload: dict | list) -> None:
        body = orjson.dumps(payload)
        while True:
            response = self.client.request(
                method, self.base_url + path, content=body, headers=self.headers
            )
            if response.status_code not in _RETRY_STATUSES:
                response.raise_for_status()
                return
            self.retries += 1
            if self.stop.wait(_retry_after_s(response)):
                return


def _retry_after_s(response: httpx.Response, default: float = 1.0) -> float:
    """Seconds to wait, from ``Retry-After`` given either as seconds or as an HTTP date."""
    value = response.headers.get("Retry-After", "").strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return default
