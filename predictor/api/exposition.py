"""``GET /metrics``: the service's own metrics in Prometheus' text format."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client.exposition import choose_encoder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from predictor.api.deps import RuntimeDep, bearer, get_caller, require
from predictor.telemetry import INGEST_PATHS

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response)
def metrics(
    request: Request,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Response:
    """Ingest counters, scoring lag, model, actions and ``predictor_node_risk{node,pool}``.

    Needs a key with the ``read`` scope unless ``metrics_public`` is set.
    """
    if not runtime.settings.metrics_public:
        require("read")(get_caller(runtime, credentials))  # 401 / 403 like every read route
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(runtime.telemetry.registry), media_type=content_type)


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
