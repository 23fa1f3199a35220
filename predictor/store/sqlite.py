"""The embedded store: SQLite in WAL mode, durable on commit."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from predictor.store.base import LAST_POSITION, BatchRow, Connection, GroupCommit, Store
from predictor.store.migrations import SQLITE


class SQLiteStore(Store):
    """All durable state of one service instance in one SQLite file.

    Writes go through one connection under a lock; reads use a second connection so the
    scorer and the API never wait on an ingest commit (WAL lets readers run beside it).
    ``synchronous=FULL`` makes every acknowledged commit survive a crash of the process
    or of the machine. The samples log position is the table's implicit rowid.
    """

    dialect = SQLITE

    def __init__(self, path: Path | str):
        self.path = Path(path)
        in_memory = str(path) == ":memory:"
        if not in_memory:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write = self._connect()
        self._write_lock = threading.RLock()
        if in_memory:
            # Each connection to ":memory:" is a separate database: share the one.
            self._read, self._read_lock = self._write, self._write_lock
        else:
            self._read = self._connect()
            self._read_lock = threading.RLock()
        self._appends = GroupCommit(self.append_batches)
        self._migrate()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # First, so that switching a new file to WAL waits for a concurrent opener.
        conn.execute("PRAGMA busy_timeout=10000")
        # Two connections switching one new file to WAL at once can get "database is
        # locked" at once, without the busy handler (SQLite's deadlock avoidance): retry.
        for attempt in range(50):
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 49:
                    conn.close()
                    raise
                time.sleep(0.01 * (1 + attempt % 10))
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def close(self) -> None:
        self._write.close()
        self._read.close()

    @contextmanager
    def _begin(self, lock: int | None) -> Iterator[Connection]:
        # BEGIN IMMEDIATE takes the file's write lock up front: every write transaction,
        # in this process or another, runs alone, so no lock key is needed.
        with self._write_lock:
            self._write.execute("BEGIN IMMEDIATE")
            try:
                yield cast(Connection, self._write)
            except BaseException:
                self._write.execute("ROLLBACK")
                raise
            self._write.execute("COMMIT")

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._read_lock:
            return self._read.execute(sql, tuple(params)).fetchall()

    def _insert_batches(self, conn: Connection, rows: list[BatchRow]) -> None:
        # One writer at a time (BEGIN IMMEDIATE): the position read here stays the last.
        position = int(conn.execute(LAST_POSITION).fetchone()[0])
        for key, n, min_ts, max_ts, names, ts, value in rows:
            cursor = conn.execute(
                "INSERT INTO sample_batches (position, batch_key, n, min_ts, max_ts, names, ts,"
                " value) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (batch_key) DO NOTHING",
                (position + n, key, n, min_ts, max_ts, names, ts, value),
            )
            position += n * cursor.rowcount
