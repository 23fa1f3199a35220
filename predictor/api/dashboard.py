"""The operator dashboard: static HTML, JS and CSS served as they are (no build step).

The page itself is public; every data call it makes goes to the ``/v1`` API with the
operator's key (``Authorization: Bearer <key>``), so serving the files openly reveals nothing.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The page is tiny and changes with each release: always revalidate rather than cache stale JS.
NO_CACHE = {"Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    """The single-page dashboard (fleet at ``/#/``, a node at ``/#/node/<name>``)."""
    return FileResponse(STATIC_DIR / "index.html", headers=NO_CACHE)


def mount_dashboard(app: FastAPI) -> None:
    """Serve the dashboard at ``/`` and its assets under ``/static``."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
