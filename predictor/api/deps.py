"""Request dependencies as ``Annotated`` aliases; tests swap them with dependency_overrides."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from predictor import auth
from predictor.auth import Caller, Scope
from predictor.config import Settings
from predictor.service import Runtime


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.runtime.settings


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]

# auto_error=False: we answer 401 ourselves (FastAPI's own answer lacks WWW-Authenticate).
bearer = HTTPBearer(auto_error=False, description="An API key: `predictor keys create`")


async def get_caller(
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """The key behind ``Authorization: Bearer <key>``; 401 when it is missing or not live.

    Async, like every dependency here: a sync one costs each request a thread hop. The
    key check reads memory (the store re-reads live keys at most once a second).
    """
    if credentials is None:
        raise HTTPException(
            401, "an API key is required: Authorization: Bearer <key>",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    caller = auth.verify_key(
        store=runtime.store, settings=runtime.settings, presented=credentials.credentials
    )
    if caller is None:
        raise HTTPException(
            401, "unknown or revoked API key",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )  # fmt: skip
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]


def require(scope: Scope) -> Callable[[Caller], Awaitable[Caller]]:
    """A dependency admitting keys that hold ``scope`` (admin holds every scope); else 403.

    Routes take it through the aliases below, e.g. ``def route(caller: AdminCaller)``.
    """

    async def check_scope(caller: CallerDep) -> Caller:
        if not caller.allows(scope):
            raise HTTPException(
                403, f"this API key has scope {caller.scope!r}; this needs {scope!r}",
                headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
            )  # fmt: skip
        return caller

    check_scope.__name__ = f"require_{scope}"
    return check_scope


IngestCaller = Annotated[Caller, Depends(require("ingest"))]
ReadCaller = Annotated[Caller, Depends(require("read"))]
AdminCaller = Annotated[Caller, Depends(require("admin"))]
