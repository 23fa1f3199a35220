"""Bounded load test: a real server under many concurrent clients sheds load with 503s.

Limits are set tight (two ingest requests in flight, a small scoring backlog) so that the
overload paths really run. Whatever the load, only 202 or 503 + Retry-After may come
back, everything answered 202 must be in the store, and memory must stay bounded.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pandas as pd
import pytest
from server_process import DEV_AUTH, ServerProcess

from predictor.store import SQLiteStore

T0 = 1_764_115_200.0
CLIENTS = 12
REQUESTS_PER_CLIENT = 12
NODES_PER_CLIENT, STEPS_PER_REQUEST = 5, 5
METRICS = ("cpu", "mem")


def request_frame(client: int, request: int) -> pd.DataFrame:
    """Each client owns its nodes and moves forward in event time request by request."""
    rows = [
        (f"c{client}-n{n}", m, T0 + 10.0 * (request * STEPS_PER_REQUEST + k), 0.1 * n + 0.01 * k)
        for k in range(STEPS_PER_REQUEST)
        for n in range(NODES_PER_CLIENT)
        for m in METRICS
    ]
    return pd.DataFrame(rows, columns=["node", "metric", "ts", "value"])


@pytest.mark.integration
def test_overload_answers_503_with_retry_after_and_loses_nothing(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path,
        db=tmp_path / "load.db",
        env={"PREDICTOR_MAX_INFLIGHT_INGEST": "2", "PREDICTOR_MAX_UNSCORED_ROWS": "1500"},
    )
    server.start()
    statuses: Counter[int] = Counter()
    acked: list[pd.DataFrame] = []
    missing_retry_after: list[int] = []
    lock = threading.Lock()
    try:
        with httpx.Client(base_url=server.url, headers=DEV_AUTH, timeout=60) as http:
            for i in range(10):  # warm-up: imports, caches and first allocations settle
                warm = request_frame(CLIENTS, i)
                r = http.post("/v1/metrics", json={"samples": warm.to_dict("records")})
                assert r.status_code == 202, r.text
                acked.append(warm)
        server.wait_scored()
        warm_rss = server.rss_kib()
        peak_rss = [warm_rss]
        done = threading.Event()

        def watch_memory() -> None:
            while not done.wait(0.05):
                peak_rss.append(server.rss_kib())

        def client(index: int) -> None:
            with httpx.Client(base_url=server.url, headers=DEV_AUTH, timeout=60) as http:
                for request in range(REQUESTS_PER_CLIENT):
                    frame = request_frame(index, request)
                    r = http.post("/v1/metrics", json={"samples": frame.to_dict("records")})
                    with lock:
                        statuses[r.status_code] += 1
                        if r.status_code == 202:
                            acked.append(frame)
                        elif (
                            r.status_code == 503 and not r.headers.get("Retry-After", "").isdigit()
                        ):
                            missing_retry_after.append(r.status_code)

        watcher = threading.Thread(target=watch_memory)
        watcher.start()
        started = time.perf_counter()
        clients = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in clients:
            t.start()
        for t in clients:
            t.join()
        elapsed = time.perf_counter() - started
        done.set()
        watcher.join()
    finally:
        server.terminate()

    assert set(statuses) <= {202, 503}, statuses  # no other 5xx, never 429
    assert statuses[503] > 0, "the limits were meant to be hit"
    assert statuses[202] > 0
    assert not missing_retry_after
    assert sum(statuses.values()) == CLIENTS * REQUESTS_PER_CLIENT

    # Nothing acknowledged was lost.
    expected = pd.concat(acked, ignore_index=True)
    store = SQLiteStore(server.db)
    stored, in_log = store.samples_frame(), store.last_sample_rowid()
    store.close()
    merged = expected.merge(
        stored, on=["node", "metric", "ts", "value"], how="left", indicator=True
    )
    assert (merged["_merge"] == "both").all()
    assert in_log == len(expected)  # and a refused batch left nothing behind

    # Memory stays bounded under load: well inside a generous multiple of the warm size.
    assert max(peak_rss) < 2 * warm_rss, (warm_rss, max(peak_rss))
    total = CLIENTS * REQUESTS_PER_CLIENT
    print(
        f"load: {total} requests from {CLIENTS} clients in {elapsed:.2f}s ="
        f" {total / elapsed:.0f} requests/s, {statuses[202]} accepted / {statuses[503]} shed,"
        f" {statuses[202] * len(request_frame(0, 0)) / elapsed:.0f} samples/s acknowledged;"
        f" RSS {warm_rss // 1024} MiB warm, {max(peak_rss) // 1024} MiB peak"
    )
