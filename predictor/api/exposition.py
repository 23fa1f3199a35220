"""``GET /metrics``: the service's own metrics in Prometheus' text format."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client.exposition import choose_encoder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from predictor.api.deps import RuntimeDep, bearer, get_caller, require
from predictor.telemetry import INGEST_PATHS

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response)
async def metrics(
    request: Request,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Response:
    """Ingest counters, scoring lag, model, actions and ``predictor_node_risk{node,pool}``.

    Needs a key with the ``read`` scope unless ``metrics_public`` is set.
    """
    if not runtime.settings.metrics_public:
        # 401 / 403 like every read route
        await require("read")(await get_caller(runtime, credentials))
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    # Collecting reads the store: off the event loop.
    body = await run_in_threadpool(encoder, runtime.telemetry.registry)
    return Response(body, media_type=content_type)


class IngestRequestCounter:
    """ASGI middleware counting answers to the ingest routes by format and status code.

    Sits outside the routes and their exception handlers, so 4xx and 503 answers are
    counted with the code the client saw.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fmt = INGEST_PATHS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if fmt is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                runtime = getattr(scope["app"].state, "runtime", None)
                if runtime is not None:
                    runtime.telemetry.requests.labels(fmt, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)
