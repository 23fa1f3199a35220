"""Prometheus remote_write 1.0 receiver: ``POST /api/v1/write``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from predictor import service
from predictor.api.deps import IngestCaller, RuntimeDep
from predictor.api.metrics import read_body

router = APIRouter(tags=["ingest"])


@router.post("/api/v1/write", status_code=204, response_class=Response)
async def remote_write(request: Request, runtime: RuntimeDep, caller: IngestCaller) -> Response:
    """Snappy-compressed protobuf ``WriteRequest``; 204 only after the commit.

    400 for a body that is not snappy or not a WriteRequest (Prometheus drops it), 503 with
    Retry-After when the scorer is behind (Prometheus retries), 415 for remote_write 2.0
    (a 2.0 sender falls back to 1.0 on 415).
    """
    content_type = request.headers.get("content-type", "")
    if "io.prometheus.write.v2" in content_type:
        raise service.IngestError([{"error": "remote_write 2.0 is not supported; use 1.0"}], 415)
    encoding = request.headers.get("content-encoding", "snappy").strip().lower()
    if encoding != "snappy":
        raise service.IngestError([{"error": "Content-Encoding must be snappy"}], 415)
    with service.ingest_slot(runtime=runtime):  # past max_inflight_ingest: 503 + Retry-After
        body = await read_body(request, runtime.settings.max_body_bytes)
        await run_in_threadpool(service.ingest_remote_write, runtime=runtime, body=body)
    return Response(status_code=204)
