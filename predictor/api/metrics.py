"""Ingest routes: metric samples and events."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from predictor import service
from predictor.api.deps import IngestCaller, RuntimeDep
from predictor.schemas import Accepted, AlertmanagerWebhook, EventsIn, MetricsBatch

router = APIRouter(prefix="/v1", tags=["ingest"])


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise service.IngestError([{"error": f"body larger than {limit} bytes"}], status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise service.IngestError([{"error": f"body larger than {limit} bytes"}], status=413)
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/metrics",
    status_code=202,
    response_model=Accepted,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": MetricsBatch.model_json_schema()}},
        }
    },
)
async def post_metrics(request: Request, runtime: RuntimeDep, caller: IngestCaller) -> JSONResponse:
    """Store samples durably; 202 only after the commit. 422 names every bad sample."""
    with service.ingest_slot(runtime=runtime):  # past max_inflight_ingest: 503 + Retry-After
        body = await read_body(request, runtime.settings.max_body_bytes)
        count = await run_in_threadpool(service.ingest_json, runtime=runtime, body=body)
    return JSONResponse({"accepted": count}, status_code=202)


@router.post("/events", status_code=202, response_model=Accepted)
def post_events(body: EventsIn, runtime: RuntimeDep, caller: IngestCaller) -> Accepted:
    """Failures, recoveries and maintenance: the labels for training and evaluation."""
    events = [e.model_dump() for e in body.events]
    return Accepted(accepted=service.record_events(runtime=runtime, events=events))


@router.post("/alertmanager", status_code=202, response_model=Accepted)
def post_alertmanager(
    body: AlertmanagerWebhook, runtime: RuntimeDep, caller: IngestCaller
) -> Accepted:
    """Receive Alertmanager webhooks as failure/recovery events (deduplicated)."""
    count = service.record_alertmanager(runtime=runtime, payload=body.model_dump())
    return Accepted(accepted=count)
