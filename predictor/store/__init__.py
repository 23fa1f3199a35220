"""Storage backends behind one interface, ``Store``.

SQLite (``SQLiteStore``) is the embedded default: one file, one service instance.
PostgreSQL (``PostgresStore``) is the shared store for scale-out: several API and scorer
processes over one database. Both render the same migrations (``migrations``) and run the
same SQL (``base.Store``). ``open_store`` picks one from the settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from predictor.store.base import Store
from predictor.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from predictor.config import Settings

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
SQLITE_SCHEME = "sqlite:///"


def check_database_url(url: str) -> str:
    """``url`` if it names a backend this service has; else a ValueError saying why."""
    if url.startswith(POSTGRES_SCHEMES) or (
        url.startswith(SQLITE_SCHEME) and len(url) > len(SQLITE_SCHEME)
    ):
        return url
    raise ValueError(
        f"unsupported database URL {url!r}: use postgresql://user@host:port/dbname"
        " or sqlite:///path/to/file.db"
    )


def store_for_url(url: str) -> Store:
    """The store a database URL names (``postgresql://...`` or ``sqlite:///path``)."""
    check_database_url(url)
    if url.startswith(POSTGRES_SCHEMES):
        from predictor.store.postgres import PostgresStore  # psycopg only when used

        return PostgresStore(url)
    return SQLiteStore(Path(url[len(SQLITE_SCHEME) :]))


def open_store(settings: Settings) -> Store:
    """The configured store: ``database_url`` when set, else SQLite at ``settings.db``."""
    if settings.database_url:
        return store_for_url(settings.database_url)
    return SQLiteStore(settings.db)


__all__ = ["SQLiteStore", "Store", "check_database_url", "open_store", "store_for_url"]
