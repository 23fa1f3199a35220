"""The shared store: PostgreSQL, so several API and scorer processes share one state."""

from __future__ import annotations

import csv
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, cast

import psycopg

from predictor.ingest.batch import SampleBatch
from predictor.store.base import Connection, Cursor, Store
from predictor.store.migrations import POSTGRES

# Where COPY lands a batch before it joins the log; ``i`` keeps the batch's order.
STAGING = """CREATE TEMP TABLE IF NOT EXISTS samples_in (
    i BIGINT GENERATED ALWAYS AS IDENTITY, node TEXT NOT NULL, metric TEXT NOT NULL,
    ts DOUBLE PRECISION NOT NULL, value DOUBLE PRECISION NOT NULL
) ON COMMIT DELETE ROWS"""


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

    def _insert_samples(self, conn: Connection, batch: SampleBatch) -> None:
        # append_samples holds APPEND_LOCK until commit. The seq identity is assigned at
        # insert time, not commit time: without the lock, a batch given seq 11..20 could
        # commit before one given 1..10, a scorer reading "seq > 0" would take 11..20,
        # move its position to 20 and never see 1..10. Serialising appenders makes seq
        # order the commit order. (Identity sequences cache 1 value, so no session
        # pre-allocates a block out of order either.)
        raw = cast(_PgConnection, conn).raw
        data = batch.to_frame().to_csv(header=False, index=False, quoting=csv.QUOTE_NONNUMERIC)
        with raw.cursor() as cursor:
            # CSV with strings quoted: an empty node name stays '' (unquoted empty is NULL);
            # floats are written shortest-round-trip, so they arrive bit for bit.
            with cursor.copy(
                "COPY samples_in (node, metric, ts, value) FROM STDIN (FORMAT csv)"
            ) as copy:
                copy.write(data)
            cursor.execute(
                "INSERT INTO samples (node, metric, ts, value)"
                " SELECT node, metric, ts, value FROM samples_in ORDER BY i"
                " ON CONFLICT (node, metric, ts) DO NOTHING"
            )
