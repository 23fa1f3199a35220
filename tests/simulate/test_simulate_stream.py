"""Streaming a simulated fleet to a fake predictor API."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

import pandas as pd
import pytest

from predictor.simulate import FleetSpec, simulate, stream_to_api
from predictor.simulate.stream import MAX_BATCH
from tests.server_process import serving

SPEC = FleetSpec(nodes=6, pools=2, duration_s=3 * 3600, seed=5, failure_rate_per_node_day=12)


@dataclass
class FakeApi:
    """Records every request; answers 503 to the first ``busy`` metric POSTs."""

    busy: int = 0
    requests: list[tuple[str, str, dict]] = field(default_factory=list)
    rejected: int = 0
    url: str = ""
    authorization: set[str | None] = field(default_factory=set)  # every header value seen

    def accepted(self, method: str, path: str) -> list[dict]:
        return [body for m, p, body in self.requests if m == method and p == path]


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like the real server

        def do_PUT(self) -> None:
            self.answer()

        def do_POST(self) -> None:
            self.answer()

        def answer(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fake.authorization.add(self.headers.get("Authorization"))
            if self.path == "/v1/metrics" and fake.busy > 0:
                fake.busy -= 1
                fake.rejected += 1
                self.send_response(503)
                self.send_header("Retry-After", "0")
            else:
                fake.requests.append((self.command, self.path, body))
                self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

    with serving(Handler) as fake.url:
        yield fake


def samples_of(body: list[dict]) -> list[dict]:
    """The samples of a body in the per-node shape, in order."""
    return [
        {"node": group["node"], "metric": metric, "ts": group["ts"], "value": value}
        for group in body
        for metric, value in group["values"].items()
    ]


def test_streams_every_sample_and_event_through_503s(api: FakeApi) -> None:
    api.busy = 3
    stats = stream_to_api(SPEC, base_url=api.url, speed=0)
    fleet = simulate(SPEC)

    # Nodes are registered first, one PUT each, with the registry's fields.
    puts = [(p, body) for m, p, body in api.requests if m == "PUT"]
    assert [m for m, _, _ in api.requests[: len(puts)]] == ["PUT"] * len(puts)
    assert len(puts) == SPEC.nodes
    first_path, first_body = puts[0]
    first = fleet.nodes.iloc[0]
    assert first_path == f"/v1/nodes/{first['node']}"
    assert first_body == {
        "pool": first["pool"],
        "lb_backend": first["lb_backend"],
        "lb_server": first["lb_server"],
        "standby": first["standby"],
        "health_url": None,
    }

    batches = [samples_of(body) for body in api.accepted("POST", "/v1/metrics")]
    assert all(0 < len(batch) <= MAX_BATCH for batch in batches)
    received = pd.DataFrame([s for batch in batches for s in batch])
    pd.testing.assert_frame_equal(received, fleet.samples, check_dtype=False)

    events = pd.DataFrame(
        [e for body in api.accepted("POST", "/v1/events") for e in body["events"]]
    )
    expected = fleet.events[["node", "ts", "kind", "reason"]]
    assert len(expected) > 0
    pd.testing.assert_frame_equal(events, expected, check_dtype=False)

    assert api.rejected == 3 and stats.retries == 3
    assert (stats.steps, stats.samples, stats.events) == (SPEC.n_steps, len(received), len(events))


def test_sends_the_api_key_on_every_request_and_none_without_one(api: FakeApi) -> None:
    spec = FleetSpec(nodes=2, pools=1, duration_s=600, seed=1, failure_rate_per_node_day=0)
    stream_to_api(spec, base_url=api.url, api_key="pk_test")
    assert api.authorization == {"Bearer pk_test"} and len(api.requests) > spec.nodes
    api.authorization.clear()
    stream_to_api(spec, base_url=api.url)
    assert api.authorization == {None}


def test_splits_steps_larger_than_a_batch(api: FakeApi) -> None:
    spec = FleetSpec(nodes=3, pools=1, duration_s=60, seed=1)  # 18 samples a step
    stream_to_api(spec, base_url=api.url, speed=1e9, max_batch=10)
    batches = [len(samples_of(body)) for body in api.accepted("POST", "/v1/metrics")]
    assert max(batches) == 10 and len(batches) == 2 * spec.n_steps
    assert sum(batches) == len(simulate(spec).samples)


def test_paces_by_simulated_time_and_stops_on_request(api: FakeApi) -> None:
    spec = FleetSpec(nodes=2, pools=1, duration_s=3600, seed=1)
    stop = threading.Event()
    seen: list[float] = []

    def on_step(ts: float, samples: pd.DataFrame, events: pd.DataFrame) -> None:
        seen.append(ts)
        if len(seen) == 6:
            stop.set()

    started = time.monotonic()
    stats = stream_to_api(
        spec, base_url=api.url, speed=spec.step_s / 0.02, on_step=on_step, stop=stop
    )
    elapsed = time.monotonic() - started

    assert stats.steps == 6 and seen == [spec.start_ts + i * spec.step_s for i in range(6)]
    assert elapsed >= 5 * 0.02
    assert len(api.accepted("POST", "/v1/metrics")) == 6  # paced: one POST per step
