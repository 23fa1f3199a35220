"""The FastAPI application."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from predictor import service
from predictor.api import exposition, health, metrics, nodes, otlp, remote_write
from predictor.api.dashboard import mount_dashboard
from predictor.config import Settings, get_settings
from predictor.ingest.prober import run_prober


def create_worker_app() -> FastAPI:
    """The app of one of several API worker processes (``api_workers``), set up from the
    environment as ``predictor serve`` left it."""
    from predictor.logging_setup import configure_logging

    settings = get_settings()
    configure_logging(json_lines=settings.log_json)
    return create_app(settings)


def create_app(settings: Settings | None = None, runtime: service.Runtime | None = None) -> FastAPI:
    """Build the app; the runtime starts with it and stops (flushed, checkpointed) with it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = runtime or service.Runtime.build(settings or get_settings())
        app.state.runtime = rt
        rt.start()
        prober = asyncio.create_task(
            run_prober(
                targets=lambda: {
                    n: m["health_url"] for n, m in rt.store.nodes().items() if m.get("health_url")
                },
                record=lambda batch: service.ingest_samples(runtime=rt, batch=batch),
                interval_s=rt.settings.probe_interval_s,
                timeout_s=rt.settings.probe_timeout_s,
            )
        )
        try:
            yield
        finally:
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prober
            rt.stop()

    app = FastAPI(title="predictor", version="0.1.0", lifespan=lifespan)
    for module in (metrics, nodes, health):
        app.include_router(module.router)
    for module in (remote_write, otlp, exposition):
        app.include_router(module.router)
    mount_dashboard(app)  # the page is public; its data calls carry the API key
    app.add_middleware(exposition.IngestRequestCounter)

    @app.exception_handler(service.IngestError)
    async def ingest_error(request: Request, exc: service.IngestError) -> JSONResponse:
        return JSONResponse({"detail": exc.errors}, status_code=exc.status)

    @app.exception_handler(UnicodeEncodeError)
    async def unstorable_text(request: Request, exc: UnicodeEncodeError) -> JSONResponse:
        # JSON may carry lone surrogates ("\ud800"), valid JSON but not storable text; the
        # write was rolled back, and it is the request that is wrong, not the server.
        return JSONResponse(
            {"detail": "strings must be valid Unicode (no lone surrogates)"}, status_code=422
        )

    @app.exception_handler(service.Overloaded)
    async def overloaded(request: Request, exc: service.Overloaded) -> JSONResponse:
        # 503, never 429: Prometheus retries 5xx and drops 429.
        return JSONResponse(
            {"detail": str(exc)},
            status_code=503,
            headers={"Retry-After": str(exc.retry_after_s)},
        )

    return app
