"""The shared store: PostgreSQL, so several API and scorer processes share one state."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, cast

import psycopg

from predictor.store.base import LAST_POSITION, BatchRow, Connection, Cursor, GroupCommit, Store
from predictor.store.migrations import POSTGRES

# Where COPY lands a batch before it joins the log; ``i`` keeps the batch's order.
STAGING = """CREATE TEMP TABLE IF NOT EXISTS batches_in (
    i BIGINT GENERATED ALWAYS AS IDENTITY, batch_key TEXT NOT NULL, n BIGINT NOT NULL,
    min_ts DOUBLE PRECISION NOT NULL, max_ts DOUBLE PRECISION NOT NULL, names BYTEA NOT NULL,
    ts BYTEA NOT NULL, value BYTEA NOT NULL
) ON COMMIT DELETE ROWS"""
BATCH_COLUMNS = "batch_key, n, min_ts, max_ts, names, ts, value"


@lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """The store's ``?`` placeholders in psycopg's ``%s`` style (a literal % doubled).

    The store's SQL never has a ``?`` inside a string literal, which this would break.
    """
    return sql.replace("%", "%%").replace("?", "%s")


class _PgConnection:
    """A psycopg connection that takes the same ``?``-placeholder SQL as sqlite3."""

    def __init__(self, conn: psycopg.Connection[Any]):
        self.raw = conn

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Cursor:
        return cast(Cursor, self.raw.execute(_pg_sql(sql), tuple(params)))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> Cursor:
        cursor = self.raw.cursor()
        cursor.executemany(_pg_sql(sql), rows)
        return cast(Cursor, cursor)


class PostgresStore(Store):
    """All durable state in one PostgreSQL database, shared by every process that opens it.

    One write connection under a lock (transactions are explicit, committed on exit) and
    one autocommit read connection, so reads see every commit without waiting on writes.
    Durability is the server's: a commit returns once its WAL record is flushed.
    A connection found broken (a server restart) is replaced on next use.
    """

    dialect = POSTGRES

    def __init__(self, url: str):
        self.url = url
        self._write_lock = threading.RLock()
        self._read_lock = threading.RLock()
        self._write = self._connect_write()
        self._read = psycopg.connect(url, autocommit=True)
        self._appends = GroupCommit(self.append_batches)
        self._migrate()

    def _connect_write(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.url, autocommit=True)
        conn.execute(STAGING)
        return conn

    def _writer(self) -> psycopg.Connection[Any]:
        if self._write.broken:
            self._write.close()
            self._write = self._connect_write()
        return self._write

    def close(self) -> None:
        self._write.close()
        self._read.close()

    @contextmanager
    def _begin(self, lock: int | None) -> Iterator[Connection]:
        with self._write_lock:
            conn = self._writer()
            with conn.transaction():
                if lock is not None:
                    # Held until commit or rollback: transactions taking the same key run
                    # one at a time across every process, as SQLite's BEGIN IMMEDIATE does.
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
                yield _PgConnection(conn)

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._read_lock:
            if self._read.broken:
                self._read.close()
                self._read = psycopg.connect(self.url, autocommit=True)
            return self._read.execute(_pg_sql(sql), tuple(params)).fetchall()

    def _insert_batches(self, conn: Connection, rows: list[BatchRow]) -> None:
        # append_samples holds APPEND_LOCK until commit, so the position read here is still
        # the last one at commit: positions follow commit order, and a scorer that has read
        # up to position p never misses a batch committed later below p.
        raw = cast(_PgConnection, conn).raw
        with raw.cursor() as cursor:
            with cursor.copy(
                f"COPY batches_in ({BATCH_COLUMNS}) FROM STDIN (FORMAT binary)"
            ) as copy:
                copy.set_types(["text", "int8", "float8", "float8", "bytea", "bytea", "bytea"])
                for row in rows:
                    copy.write_row(row)
            # Each new key once (the first), positions as running sums in arrival order.
            cursor.execute(
                f"INSERT INTO sample_batches (position, {BATCH_COLUMNS})"
                f" SELECT ({LAST_POSITION})"
                f" + sum(n) OVER (ORDER BY i), {BATCH_COLUMNS} FROM ("
                "  SELECT DISTINCT ON (batch_key) * FROM batches_in AS b WHERE NOT EXISTS"
                "  (SELECT 1 FROM sample_batches AS s WHERE s.batch_key = b.batch_key)"
                "  ORDER BY batch_key, i) AS fresh ORDER BY i"
            )
