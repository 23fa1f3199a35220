"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from predictor import service
from predictor.api.deps import RuntimeDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(runtime: RuntimeDep) -> JSONResponse:
    """Ready when the store answers and the scorer runs (a batch model is optional).

    An ``api`` replica of the scale-out mode is ready when the store and the stream answer.
    """
    try:
        status = service.health(runtime=runtime)
    except Exception as exc:  # the store is unreachable: not ready, say why
        return JSONResponse({"ready": False, "error": str(exc)}, status_code=503)
    return JSONResponse(status, status_code=200 if status["ready"] else 503)
