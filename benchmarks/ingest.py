"""Ingest: samples/s through the real HTTP path to a durable commit, against the store's floor."""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    fleet_step,
    json_bodies,
    json_group_bodies,
    request_parts,
    running_server,
    send_all,
)
from predictor.ingest.batch import SampleBatch
from predictor.store import SQLiteStore

REMOTE_WRITE_PATH = "/api/v1/write"
FLOOR_CHUNK = 100_000  # the store's fastest batched insert: big transactions


def make_samples(n_nodes: int, n_metrics: int, n_steps: int, *, t0: float) -> SampleBatch:
    rng = np.random.default_rng(1)
    steps = [fleet_step(n_nodes, n_metrics, k, t0=t0, rng=rng) for k in range(n_steps)]
    return SampleBatch(
        node=np.concatenate([s.node for s in steps]),
        metric=np.concatenate([s.metric for s in steps]),
        ts=np.concatenate([s.ts for s in steps]),
        value=np.concatenate([s.value for s in steps]),
    )


def store_floor(batch: SampleBatch, path: Path, chunk: int = FLOOR_CHUNK) -> float:
    """Seconds to commit ``batch`` straight into a fresh store of the same kind."""
    store = SQLiteStore(path)
    try:
        started = time.perf_counter()
        for start in range(0, len(batch), chunk):
            store.append_samples(batch.take(np.arange(start, min(start + chunk, len(batch)))))
        return time.perf_counter() - started
    finally:
        store.close()


def bench_ingest(
    workdir: Path,
    *,
    n_nodes: int = 10_000,
    n_metrics: int = 20,
    n_steps: int = 5,
    per_request: int = 1_000,
    connections: int = 16,
) -> dict[str, Any]:
    """JSON (and remote_write when the route exists) vs a direct batched store insert."""
    # Recent timestamps: the API rejects samples far in the past or future.
    batch = make_samples(n_nodes, n_metrics, n_steps, t0=time.time() - n_steps * 10.0)
    floor_s = store_floor(batch, workdir / "floor.db")
    floor_rate = len(batch) / floor_s
    out: dict[str, Any] = {
        "samples": len(batch),
        "per_request": per_request,
        "connections": connections,
        "floor": {"samples_per_s": floor_rate, "seconds": floor_s, "chunk": FLOOR_CHUNK},
    }
    bodies = json_bodies(batch, per_request)
    # "json": one process (API + scorer, the default); "json_groups": the same samples in
    # the per-node shape; "json_split": `--role api` with a `--role scorer` process beside
    # it, so the API process only parses and commits; "json_split_2": the same with two
    # API worker processes (PREDICTOR_API_WORKERS=2).
    for kind, kind_bodies, split, api_workers in (
        ("json", bodies, False, 1),
        ("json_groups", json_group_bodies(batch, per_request), False, 1),
        ("json_split", bodies, True, 1),
        ("json_split_2", bodies, True, 2),
    ):
        with running_server(workdir / kind, split=split, api_workers=api_workers) as server:
            stats = send_all(
                server.base_url, "/v1/metrics", kind_bodies,
                headers={"Content-Type": "application/json"}, connections=connections,
            )  # fmt: skip
            rw_available = server.has_route(REMOTE_WRITE_PATH)
        rate = len(batch) / stats.seconds
        out[kind] = {
            "samples_per_s": rate,
            "seconds": stats.seconds,
            "requests": stats.requests,
            "retries_503": stats.retries,
            "client_cpu_s_per_1m": stats.client_cpu_s * 1e6 / len(batch),
            "ratio_vs_floor": rate / floor_rate,
            "body_bytes_mean": float(np.mean([len(b) for b in kind_bodies])),
        }
    out["remote_write"] = None
    if rw_available:
        rw_bodies = remote_write_bodies(batch, per_request)
        with running_server(workdir / "remote_write") as server:
            stats = send_all(
                server.base_url, REMOTE_WRITE_PATH, rw_bodies,
                headers={
                    "Content-Type": "application/x-protobuf",
                    "Content-Encoding": "snappy",
                    "X-Prometheus-Remote-Write-Version": "0.1.0",
                },
                connections=connections,
            )  # fmt: skip
        rw_rate = len(batch) / stats.seconds
        out["remote_write"] = {
            "samples_per_s": rw_rate,
            "seconds": stats.seconds,
            "requests": stats.requests,
            "retries_503": stats.retries,
            "client_cpu_s_per_1m": stats.client_cpu_s * 1e6 / len(batch),
            "ratio_vs_floor": rw_rate / floor_rate,
        }
    return out


# -- Prometheus remote_write 1.0 encoding (protobuf WriteRequest, snappy block) ------------
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _label(name: str, value: str) -> bytes:
    return _field(1, _field(1, name.encode()) + _field(2, value.encode()))


def remote_write_bodies(batch: SampleBatch, per_request: int) -> list[bytes]:
    """``WriteRequest`` bodies of ``per_request`` samples, one time series per sample."""
    import cramjam  # only needed when the remote_write route exists

    bodies = []
    for part in request_parts(batch, per_request):
        series = []
        for node, metric, ts, value in zip(
            part.node.tolist(),
            part.metric.tolist(),
            part.ts.tolist(),
            part.value.tolist(),
            strict=True,
        ):
            labels = _label("__name__", metric) + _label("instance", node) + _label("job", "node")
            sample = b"\x09" + struct.pack("<d", value) + b"\x10" + _varint(int(ts * 1000))
            series.append(_field(1, labels + _field(2, sample)))
        bodies.append(bytes(cramjam.snappy.compress_raw(b"".join(series))))
    return bodies
