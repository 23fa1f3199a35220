"""OTLP/HTTP metrics receiver: ``POST /v1/otlp/metrics`` (protobuf or JSON)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from predictor import service
from predictor.api.deps import IngestCaller, RuntimeDep
from predictor.api.metrics import read_body
from predictor.ingest.otlp import media_type

router = APIRouter(prefix="/v1/otlp", tags=["ingest"])


@router.post("/metrics", response_class=Response)
async def otlp_metrics(request: Request, runtime: RuntimeDep, caller: IngestCaller) -> Response:
    """An ``ExportMetricsServiceRequest``; 200 with an ``ExportMetricsServiceResponse``.

    The answer is in the request's encoding, sent after the commit; data points that were
    not stored are counted in its ``partialSuccess``. 400 for an undecodable body, 415 for
    another Content-Type, 503 with Retry-After when the scorer is behind (OTLP retries it).
    """
    content_type = media_type(request.headers.get("content-type"))
    with service.ingest_slot(runtime=runtime):  # past max_inflight_ingest: 503 + Retry-After
        body = await read_body(request, runtime.settings.max_body_bytes)
        result = await run_in_threadpool(
            service.ingest_otlp, runtime=runtime, body=body, content_type=content_type,
            content_encoding=request.headers.get("content-encoding"),
        )  # fmt: skip
    return Response(result.response(content_type), media_type=content_type)
