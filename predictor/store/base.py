"""The store interface and all of its SQL, written once for every backend.

A backend (``SQLiteStore``, ``PostgresStore``) only connects, runs a write transaction,
runs a read query, and bulk-inserts samples; every query here uses ``?`` placeholders
and SQL both SQLite (>= 3.35) and PostgreSQL accept (``ON CONFLICT``, ``RETURNING``).
Database-specific fragments come from ``self.dialect`` (see ``migrations.Dialect``).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import orjson
import pandas as pd

from predictor.ingest.batch import SampleBatch
from predictor.store.migrations import Dialect, apply_migrations

NODE_FIELDS = ("pool", "lb_backend", "lb_server", "standby", "health_url", "labels")
RISK_COLUMNS = ("node", "ts", "risk", "online", "batch", "p_fail", "trend", "why")
ACTION_COLUMNS = (
    "id", "ts", "node", "pool", "action", "reason", "risk", "executed", "dry_run", "status",
    "detail", "wall_ts",
)  # fmt: skip

# PostgreSQL advisory-lock keys (SQLite has one writer at a time and ignores them).
DECIDER_LOCK = 0x70726564_01  # transaction(): deciders check and take budgets one at a time
APPEND_LOCK = 0x70726564_02  # append_samples: log positions follow commit order
LAST_POSITION = "SELECT coalesce(max(position), 0) FROM sample_batches"  # the log's end
LIVE_KEYS_TTL_S = 1.0  # how stale the live API keys a request is checked against may be
MIGRATION_LOCK = 0x70726564_03  # schema migrations: one process migrates, the others wait


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """What ``transaction()`` yields on every backend: ``?`` placeholders, DB-API cursors."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Cursor: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> Cursor: ...


BatchRow = tuple[str, int, float, float, bytes, bytes, bytes]


def _encode(batch: SampleBatch) -> BatchRow:
    """A batch as a log row: key, size, time range, names (JSON), ts and value (float64)."""
    names = orjson.dumps([batch.node.tolist(), batch.metric.tolist()])
    ts, value = batch.ts.astype("<f8").tobytes(), batch.value.astype("<f8").tobytes()
    key = hashlib.sha256(names + ts + value).hexdigest()
    return key, len(batch), float(batch.ts.min()), float(batch.ts.max()), names, ts, value


def _decode(names: bytes, ts: bytes, value: bytes) -> SampleBatch:
    nodes, metrics = orjson.loads(bytes(names))
    return SampleBatch.from_columns(
        nodes, metrics, np.frombuffer(bytes(ts), "<f8"), np.frombuffer(bytes(value), "<f8")
    )


@dataclass
class _Ticket:
    batch: SampleBatch
    done: bool = False
    position: int = 0
    error: BaseException | None = None


class GroupCommit:
    """Concurrent appends share one transaction, and so one fsync (group commit).

    Each caller queues its batch and waits for the commit lock; whoever gets it commits
    every batch queued so far, and the callers behind it find theirs already durable. A
    group that fails is retried batch by batch, so one bad batch fails alone.
    """

    def __init__(self, commit: Callable[[list[SampleBatch]], int]):
        self._commit = commit
        self._queue: list[_Ticket] = []
        self._queue_lock = threading.Lock()
        self._commit_lock = threading.Lock()

    def append(self, batch: SampleBatch) -> int:
        ticket = _Ticket(batch)
        with self._queue_lock:
            self._queue.append(ticket)
        with self._commit_lock:
            if not ticket.done:
                with self._queue_lock:
                    group, self._queue = self._queue, []
                self._run(group)
        if ticket.error is not None:
            raise ticket.error
        return ticket.position

    def _run(self, group: list[_Ticket]) -> None:
        try:
            position = self._commit([t.batch for t in group])
        except BaseException as exc:
            if len(group) > 1:
                for ticket in group:
                    self._run([ticket])
                return
            group[0].error = exc
            position = 0
        for ticket in group:
            ticket.position, ticket.done = position, True


class Store(ABC):
    """All durable state of the service: the samples log, nodes, events, risk, actions,
    node state, meta, API keys, and the scale-out leases and checkpoints.

    ``transaction()`` is the one write transaction for raw SQL (the policy's): concurrent
    callers are serialised, in one process or many, so a check-then-write inside it (the
    disruption budget) is atomic.
    """

    dialect: Dialect
    _live_keys: tuple[float, list[dict[str, Any]]] | None = None  # (read at, keys)
    _appends: GroupCommit  # backends set it to GroupCommit(self.append_batches)

    # -- what a backend provides -------------------------------------------------------
    @abstractmethod
    def _begin(self, lock: int | None) -> AbstractContextManager[Connection]:
        """A write transaction, committed on exit, rolled back on an exception.

        ``lock``: a key that serialises transactions taking the same key across processes.
        """

    @abstractmethod
    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read on the read connection (sees every committed write)."""

    @abstractmethod
    def _insert_batches(self, conn: Connection, rows: list[BatchRow]) -> None:
        """Append encoded batches in order, each at the position after the one before it;
        a batch whose key is already stored (or repeated in ``rows``) is skipped."""

    @abstractmethod
    def close(self) -> None: ...

    # -- shared ------------------------------------------------------------------------
    def _migrate(self) -> list[int]:
        """Bring the schema up to date (backends call it on open; closed if it fails)."""
        try:
            with self._begin(MIGRATION_LOCK) as conn:
                return apply_migrations(conn, self.dialect)
        except BaseException:
            self.close()
            raise

    def transaction(self) -> AbstractContextManager[Connection]:
        """One write transaction; concurrent deciders (threads or processes) serialise."""
        return self._begin(DECIDER_LOCK)

    def schema_version(self) -> int:
        return int(self._query("SELECT coalesce(max(version), 0) FROM schema_version")[0][0])

    def _frame(
        self, sql: str, params: Iterable[Any], columns: Sequence[str], floats: Sequence[str]
    ) -> pd.DataFrame:
        frame = pd.DataFrame.from_records(self._query(sql, params), columns=list(columns))
        return frame.astype(dict.fromkeys(floats, np.float64))

    def ping(self) -> bool:
        return bool(self._query("SELECT 1"))

    # -- samples -----------------------------------------------------------------------
    # The samples log is one row per ingested batch (columns as blobs), so the hot path
    # commits one small row per request instead of a row and an index entry per sample.
    # A batch's position is the number of samples in the log up to and including it; the
    # scorer follows positions and replays from them. Idempotency is per batch (its
    # sha256): a resent batch is stored once. A sample sent again inside a *different*
    # batch is kept in the log and dropped when read (first value wins), and the online
    # features ignore a sample that is not newer than its series' last one.

    def append_samples(self, batch: SampleBatch) -> int:
        """Commit a batch; return the last log position. Returns once the commit is durable.

        Concurrent callers share one transaction (see :class:`GroupCommit`).
        """
        return self._appends.append(batch)

    def append_batches(self, batches: list[SampleBatch]) -> int:
        """Append batches in order in one transaction; the last log position after it.

        Each batch keeps its own identity (and idempotency key): a caller resending the
        same batches, however it groups them, stores each once.
        """
        rows = [_encode(b) for b in batches if len(b)]
        with self._begin(APPEND_LOCK) as conn:
            if rows:
                self._insert_batches(conn, rows)
            return int(conn.execute(LAST_POSITION).fetchone()[0])

    def samples_after(self, rowid: int, limit: int) -> tuple[SampleBatch, int]:
        """Whole batches after log position ``rowid``, starting within ``limit`` samples of
        it (at least one batch when there is one); also the last position read."""
        rows = self._query(
            "SELECT position, names, ts, value FROM sample_batches"
            " WHERE position > ? AND position - n < ? ORDER BY position",
            (rowid, rowid + max(1, limit)),
        )
        if not rows:
            return SampleBatch.empty(), rowid
        return SampleBatch.concat([_decode(*row[1:]) for row in rows]), int(rows[-1][0])

    def last_sample_rowid(self) -> int:
        return int(self._query(LAST_POSITION)[0][0])

    def forget_before(self, *, ts: float, position: int) -> int:
        """Delete sample batches whose samples are all older than ``ts`` and that lie at or
        before ``position`` (scored), and risk history older than ``ts``; return the
        batches deleted. The newest batch always stays: it carries the log's position.
        """
        with self._begin(None) as conn:
            cursor = conn.execute(
                "DELETE FROM sample_batches WHERE max_ts < ? AND position <= ?"
                " AND position < (SELECT max(position) FROM sample_batches)",
                (ts, position),
            )
            conn.execute("DELETE FROM risk WHERE ts < ?", (ts,))
            return int(cursor.rowcount)

    def count_samples(self) -> int:
        """Distinct stored samples (reads the log: for tests and tools, not hot paths)."""
        return len(self.samples_frame())

    def samples_frame(self, since: float | None = None, until: float | None = None) -> pd.DataFrame:
        """Stored samples as a DataFrame in ingest order, each (node, metric, ts) once."""
        rows = self._query(
            "SELECT names, ts, value FROM sample_batches WHERE max_ts >= ? AND min_ts <= ?"
            " ORDER BY position",
            (-math.inf if since is None else since, math.inf if until is None else until),
        )
        frame = SampleBatch.concat([_decode(*row) for row in rows]).to_frame()
        keep = (frame["ts"] >= (-math.inf if since is None else since)) & (
            frame["ts"] <= (math.inf if until is None else until)
        )
        frame = frame[keep & ~frame.duplicated(["node", "metric", "ts"])]
        return frame.reset_index(drop=True)

    # -- nodes -------------------------------------------------------------------------
    def upsert_node(self, node: str, meta: dict[str, Any]) -> None:
        values = {k: meta.get(k) for k in NODE_FIELDS}
        values["pool"] = values["pool"] or "default"
        values["labels"] = orjson.dumps(values["labels"] or {}).decode()
        with self._begin(None) as conn:
            conn.execute(
                "INSERT INTO nodes (node, pool, lb_backend, lb_server, standby, health_url, labels)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node) DO UPDATE SET pool=excluded.pool,"
                " lb_backend=excluded.lb_backend, lb_server=excluded.lb_server,"
                " standby=excluded.standby, health_url=excluded.health_url, labels=excluded.labels",
                (node, *(values[k] for k in NODE_FIELDS)),
            )

    def nodes(self) -> dict[str, dict[str, Any]]:
        rows = self._query(f"SELECT node, {', '.join(NODE_FIELDS)} FROM nodes")
        out = {}
        for row in rows:
            meta = dict(zip(NODE_FIELDS, row[1:], strict=True))
            meta["labels"] = orjson.loads(meta["labels"])
            out[row[0]] = meta
        return out

    def node(self, node: str) -> dict[str, Any] | None:
        return self.nodes().get(node)

    # -- events ------------------------------------------------------------------------
    def add_events(self, events: list[dict[str, Any]]) -> int:
        """Store events; one whose ``dedup_key`` is already stored is skipped. Returns new."""
        if not events:
            return 0
        with self._begin(None) as conn:
            cursor = conn.executemany(
                "INSERT INTO events (node, ts, kind, reason, dedup_key) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                [
                    (e["node"], e["ts"], e["kind"], e.get("reason", ""), e.get("dedup_key"))
                    for e in events
                ],
            )
            return int(cursor.rowcount)

    def events_frame(self) -> pd.DataFrame:
        return self._frame(
            "SELECT node, ts, kind, reason FROM events ORDER BY ts, id",
            (),
            ("node", "ts", "kind", "reason"),
            ("ts",),
        )

    # -- risk --------------------------------------------------------------------------
    def append_risk(self, frame: pd.DataFrame, *, history: np.ndarray | None = None) -> None:
        """Upsert risk points (a replay rewrites the same ones) and each node's newest.

        ``history``: which rows go to the risk history (default all); every row counts
        for the newest point.
        """
        if frame.empty:
            return
        frame = frame.reset_index(drop=True)
        p_fail = frame["p_fail"].astype(float)
        rows = list(zip(
            frame["node"].tolist(), frame["ts"].tolist(), frame["risk"].tolist(),
            frame["online"].tolist(), frame["batch"].tolist(),
            p_fail.where(p_fail.notna(), None).tolist(), frame["trend"].tolist(),
            [orjson.dumps(w).decode() for w in frame["why"]],
            strict=True,
        ))  # fmt: skip
        newest = [rows[i] for i in frame.groupby("node", sort=False)["ts"].idxmax()]
        cols = ", ".join(RISK_COLUMNS)
        marks = ", ".join("?" * len(RISK_COLUMNS))
        update = ", ".join(f"{c}=excluded.{c}" for c in RISK_COLUMNS[2:])
        with self._begin(None) as conn:
            conn.executemany(
                f"INSERT INTO risk ({cols}) VALUES ({marks})"
                f" ON CONFLICT (node, ts) DO UPDATE SET {update}",
                rows
                if history is None
                else [r for r, keep in zip(rows, history, strict=True) if keep],
            )
            # Workers may finish out of event-time order: the newest point always wins.
            conn.executemany(
                f"INSERT INTO risk_latest ({cols}) VALUES ({marks}) ON CONFLICT (node)"
                f" DO UPDATE SET ts=excluded.ts, {update} WHERE excluded.ts >= risk_latest.ts",
                newest,
            )

    def risk_history(self, node: str, since: float = -np.inf, limit: int = 5000) -> pd.DataFrame:
        cols = RISK_COLUMNS[1:]
        return (
            self._frame(
                f"SELECT {', '.join(cols)} FROM risk WHERE node = ? AND ts >= ?"
                " ORDER BY ts DESC LIMIT ?",
                (node, since, limit),
                cols,
                cols[:-1],
            )
            .iloc[::-1]
            .reset_index(drop=True)
        )

    def latest_risk(self, *, top: int | None = None, node: str | None = None) -> list[dict]:
        """Each node's newest risk point, riskiest first; ``top`` keeps the first ``top``."""
        if top is not None and top < 0:
            raise ValueError(f"top must be >= 0, got {top}")
        where, params = ("WHERE node = ?", [node]) if node is not None else ("", [])
        limit = " LIMIT ?" if top is not None else ""
        rows = self._query(
            f"SELECT {', '.join(RISK_COLUMNS)} FROM risk_latest {where}"
            f" ORDER BY risk DESC, node{limit}",
            [*params, *([top] if top is not None else [])],
        )
        out = []
        for row in rows:
            item = dict(zip(RISK_COLUMNS, row, strict=True))
            p = item["p_fail"]
            item["p_fail"] = None if p is None or math.isnan(p) else float(p)
            item["why"] = orjson.loads(item["why"])
            out.append(item)
        return out

    # -- actions and node state --------------------------------------------------------
    def actions(self, *, node: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        where, params = ("WHERE node = ?", [node]) if node else ("", [])
        rows = self._query(
            f"SELECT {', '.join(ACTION_COLUMNS)} FROM actions {where} ORDER BY id DESC LIMIT ?",
            [*params, limit],
        )
        out = [dict(zip(ACTION_COLUMNS, row, strict=True)) for row in rows]
        for item in out:
            item["executed"] = bool(item["executed"])
            item["dry_run"] = bool(item["dry_run"])
        return out

    def node_states(self) -> dict[str, dict[str, Any]]:
        rows = self._query("SELECT node, state, since, action_id FROM node_state")
        return {r[0]: {"state": r[1], "since": r[2], "action_id": r[3]} for r in rows}

    def clear_dry_run_states(self) -> int:
        """Forget drains that were only simulated: a live service starts from reality."""
        with self.transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM node_state WHERE action_id IN"
                " (SELECT id FROM actions WHERE dry_run = 1)"
            )
            return int(cursor.rowcount)

    def action_counts(self) -> dict[tuple[str, str], int]:
        """How many audit-log entries there are per (action, status)."""
        rows = self._query("SELECT action, status, count(*) FROM actions GROUP BY action, status")
        return {(r[0], r[1]): int(r[2]) for r in rows}

    # -- meta --------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    def set_meta(self, key: str, value: str) -> None:
        with self._begin(None) as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                (key, value),
            )

    # -- API keys ----------------------------------------------------------------------
    def add_api_key(
        self, *, name: str, scope: str, key_hash: str, created: float, only_if_none: bool = False
    ) -> int | None:
        """Store a key's hash; its id. ``only_if_none``: only into an empty table, else None."""
        self._live_keys = None
        with self.transaction() as conn:
            # Checked inside the serialised transaction, so two first starts make one key.
            if only_if_none and conn.execute("SELECT count(*) FROM api_keys").fetchone()[0]:
                return None
            cursor = conn.execute(
                "INSERT INTO api_keys (name, scope, hash, created) VALUES (?, ?, ?, ?)"
                " RETURNING id",
                (name, scope, key_hash, created),
            )
            return int(cursor.fetchone()[0])

    def api_keys(self, *, live_only: bool = False) -> list[dict[str, Any]]:
        """Every key (oldest first) with its hash; ``live_only`` leaves revoked ones out."""
        cols = ("id", "name", "scope", "hash", "created", "revoked")
        where = " WHERE revoked IS NULL" if live_only else ""
        rows = self._query(f"SELECT {', '.join(cols)} FROM api_keys{where} ORDER BY id")
        return [dict(zip(cols, row, strict=True)) for row in rows]

    def live_api_keys(self, *, fresh: bool = False) -> list[dict[str, Any]]:
        """The live keys, read at most once per ``LIVE_KEYS_TTL_S`` unless ``fresh`` (every
        request checks them). A key added or revoked through this store is seen at once;
        through another process (``predictor keys``), within ``LIVE_KEYS_TTL_S``."""
        cached = self._live_keys
        now = time.monotonic()
        if fresh or cached is None or now - cached[0] > LIVE_KEYS_TTL_S:
            cached = self._live_keys = (now, self.api_keys(live_only=True))
        return cached[1]

    def revoke_api_key(self, key_id: int, *, at: float) -> bool:
        """Mark a key revoked (an earlier revocation time is kept); False if there is none."""
        self._live_keys = None
        with self._begin(None) as conn:
            cursor = conn.execute(
                "UPDATE api_keys SET revoked = coalesce(revoked, ?) WHERE id = ?", (at, key_id)
            )
            return cursor.rowcount > 0

    # -- scale-out: partition leases, workers, checkpoints -----------------------------
    # Every expiry is computed and compared on the database clock, so workers on machines
    # whose clocks disagree still agree on who holds what.
    def try_acquire_lease(self, *, partition: int, worker: str, ttl_s: float) -> int | None:
        """Take ``partition`` if it is free, expired or already ours; its fencing epoch.

        The epoch goes up whenever the lease starts a new tenure (another worker held it,
        or ours had expired); renewing an unexpired lease of ours keeps it. None while
        another worker holds it unexpired.
        """
        _check_lease_args(partition=partition, worker=worker, ttl_s=ttl_s)
        now = self.dialect.now
        with self._begin(None) as conn:
            row = conn.execute(
                f"INSERT INTO leases (part, worker, epoch, expires) VALUES (?, ?, 1, {now} + ?)"
                " ON CONFLICT (part) DO UPDATE SET"
                f" epoch = CASE WHEN leases.worker = excluded.worker AND leases.expires > {now}"
                " THEN leases.epoch ELSE leases.epoch + 1 END,"
                " worker = excluded.worker, expires = excluded.expires"
                f" WHERE leases.worker = excluded.worker OR leases.expires <= {now}"
                " RETURNING epoch",
                (partition, worker, float(ttl_s)),
            ).fetchone()
        return None if row is None else int(row[0])

    def renew_leases(self, *, worker: str, ttl_s: float) -> dict[int, int]:
        """Extend every unexpired lease ``worker`` holds; {partition: epoch} still held."""
        _check_lease_args(partition=0, worker=worker, ttl_s=ttl_s)
        now = self.dialect.now
        with self._begin(None) as conn:
            rows = conn.execute(
                f"UPDATE leases SET expires = {now} + ? WHERE worker = ? AND expires > {now}"
                " RETURNING part, epoch",
                (float(ttl_s), worker),
            ).fetchall()
        return {int(part): int(epoch) for part, epoch in rows}

    def release_lease(self, *, partition: int, worker: str) -> None:
        """Give ``partition`` up now (if ``worker`` holds it); the row keeps its epoch."""
        now = self.dialect.now
        with self._begin(None) as conn:
            conn.execute(
                f"UPDATE leases SET expires = {now} WHERE part = ? AND worker = ?"
                f" AND expires > {now}",
                (partition, worker),
            )

    def leases(self) -> list[dict[str, Any]]:
        """Every lease row: partition, worker, epoch, expires_in_s (<= 0: free)."""
        rows = self._query(
            f"SELECT part, worker, epoch, expires - {self.dialect.now} FROM leases ORDER BY part"
        )
        return [
            {"partition": int(p), "worker": w, "epoch": int(e), "expires_in_s": float(x)}
            for p, w, e, x in rows
        ]

    def heartbeat_worker(self, *, worker: str) -> None:
        if not worker:
            raise ValueError("worker must be a non-empty name")
        with self._begin(None) as conn:
            conn.execute(
                f"INSERT INTO workers (worker, seen) VALUES (?, {self.dialect.now})"
                " ON CONFLICT (worker) DO UPDATE SET seen = excluded.seen",
                (worker,),
            )

    def live_workers(self, *, ttl_s: float) -> list[str]:
        """Workers that sent a heartbeat within the last ``ttl_s`` seconds, by name."""
        rows = self._query(
            f"SELECT worker FROM workers WHERE seen > {self.dialect.now} - ? ORDER BY worker",
            (float(ttl_s),),
        )
        return [r[0] for r in rows]

    def save_checkpoint(
        self, *, partition: int, worker: str, epoch: int, position: int, state: bytes
    ) -> bool:
        """Store a partition's checkpoint if ``worker`` still holds its lease at ``epoch``.

        One statement: the lease check and the write cannot be split by a takeover (on
        PostgreSQL the lease row is share-locked until commit). False when fenced off.
        """
        now = self.dialect.now
        with self._begin(None) as conn:
            cursor = conn.execute(
                "INSERT INTO checkpoints (part, worker, epoch, position, state, saved)"
                f" SELECT ?, ?, ?, ?, ?, {now} WHERE EXISTS (SELECT 1 FROM leases"
                f" WHERE part = ? AND worker = ? AND epoch = ? AND expires > {now}"
                f"{self.dialect.lock_shared})"
                " ON CONFLICT (part) DO UPDATE SET worker = excluded.worker,"
                " epoch = excluded.epoch, position = excluded.position, state = excluded.state,"
                " saved = excluded.saved WHERE checkpoints.epoch <= excluded.epoch",
                (partition, worker, epoch, position, bytes(state), partition, worker, epoch),
            )
            return cursor.rowcount > 0

    def load_checkpoint(self, *, partition: int) -> tuple[int, bytes] | None:
        rows = self._query("SELECT position, state FROM checkpoints WHERE part = ?", (partition,))
        return (int(rows[0][0]), bytes(rows[0][1])) if rows else None


def _check_lease_args(*, partition: int, worker: str, ttl_s: float) -> None:
    if partition < 0:
        raise ValueError(f"partition must be >= 0, got {partition}")
    if not worker:
        raise ValueError("worker must be a non-empty name")
    if not (math.isfinite(ttl_s) and ttl_s > 0):
        raise ValueError(f"ttl_s must be a positive number of seconds, got {ttl_s}")
