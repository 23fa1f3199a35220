"""The embedded store: SQLite in WAL mode, durable on commit."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from predictor.ingest.batch import SampleBatch

SCHEMA = """
-- Append-only: the rowid is the ingest sequence the scorer follows and replays from.
CREATE TABLE IF NOT EXISTS samples (
    node TEXT NOT NULL, metric TEXT NOT NULL, ts REAL NOT NULL, value REAL NOT NULL
);
-- Idempotent ingest: a sample resent (a lost 202, a client retry) is stored once; the
-- first value for a (node, metric, ts) wins.
CREATE UNIQUE INDEX IF NOT EXISTS samples_series_ts ON samples (node, metric, ts);
CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY, pool TEXT NOT NULL DEFAULT 'default', lb_backend TEXT,
    lb_server TEXT, standby TEXT, health_url TEXT, labels TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, node TEXT NOT NULL, ts REAL NOT NULL, kind TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    dedup_key TEXT UNIQUE  -- e.g. an Alertmanager fingerprint: a re-notification is one event
);
CREATE INDEX IF NOT EXISTS events_node_ts ON events (node, ts);
-- One point per node evaluation; a replay after a crash rewrites the same points.
CREATE TABLE IF NOT EXISTS risk (
    node TEXT NOT NULL, ts REAL NOT NULL, risk REAL NOT NULL, online REAL NOT NULL,
    batch REAL NOT NULL, p_fail REAL, trend REAL NOT NULL, why TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS risk_node_ts ON risk (node, ts);
CREATE TABLE IF NOT EXISTS actions (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, node TEXT NOT NULL, pool TEXT NOT NULL,
    action TEXT NOT NULL, reason TEXT NOT NULL, risk REAL, executed INTEGER NOT NULL,
    dry_run INTEGER NOT NULL, status TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '',
    wall_ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS actions_node ON actions (node, id);
-- The policy's memory: which nodes are drained, so a restart neither forgets nor repeats.
CREATE TABLE IF NOT EXISTS node_state (
    node TEXT PRIMARY KEY, state TEXT NOT NULL, since REAL NOT NULL, action_id INTEGER
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- API keys: only the sha256 of each key is kept; revoked is when it was revoked (NULL: live).
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, scope TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
    created REAL NOT NULL, revoked REAL
);
"""

NODE_FIELDS = ("pool", "lb_backend", "lb_server", "standby", "health_url", "labels")


class SQLiteStore:
    """All durable state of one service instance in one SQLite file.

    Writes go through one connection under a lock; reads use a second connection so the
    scorer and the API never wait on an ingest commit (WAL lets readers run beside it).
    ``synchronous=FULL`` makes every acknowledged commit survive a crash of the process
    or of the machine.
    """

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
        with self._write_lock:
            self._write.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    def close(self) -> None:
        self._write.close()
        self._read.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``BEGIN IMMEDIATE`` so concurrent deciders serialise."""
        with self._write_lock:
            self._write.execute("BEGIN IMMEDIATE")
            try:
                yield self._write
            except BaseException:
                self._write.execute("ROLLBACK")
                raise
            self._write.execute("COMMIT")

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._read_lock:
            return self._read.execute(sql, tuple(params)).fetchall()

    # -- samples ---------------------------------------------------------------------
    def append_samples(self, batch: SampleBatch) -> int:
        """Commit a batch; return the last rowid. Returns only after the commit is durable."""
        rows = zip(
            batch.node.tolist(),
            batch.metric.tolist(),
            batch.ts.tolist(),
            batch.value.tolist(),
            strict=True,
        )
        with self.transaction() as conn:
            conn.executemany("INSERT OR IGNORE INTO samples VALUES (?, ?, ?, ?)", rows)
            return int(conn.execute("SELECT max(rowid) FROM samples").fetchone()[0] or 0)

    def samples_after(self, rowid: int, limit: int) -> tuple[SampleBatch, int]:
        """Samples in ingest order after ``rowid``; also the last rowid read."""
        rows = self._query(
            "SELECT rowid, node, metric, ts, value FROM samples WHERE rowid > ? "
            "ORDER BY rowid LIMIT ?",
            (rowid, limit),
        )
        if not rows:
            return SampleBatch.empty(), rowid
        ids, nodes, metrics, stamps, values = zip(*rows, strict=True)
        return SampleBatch.from_columns(nodes, metrics, stamps, values), int(ids[-1])

    def last_sample_rowid(self) -> int:
        return int(self._query("SELECT coalesce(max(rowid), 0) FROM samples")[0][0])

    def count_samples(self) -> int:
        return int(self._query("SELECT count(*) FROM samples")[0][0])

    def samples_frame(self, since: float | None = None, until: float | None = None) -> pd.DataFrame:
        """Stored samples as a DataFrame in ingest order (training and replays)."""
        sql = "SELECT node, metric, ts, value FROM samples WHERE ts >= ? AND ts <= ? ORDER BY rowid"
        with self._read_lock:
            return pd.read_sql_query(
                sql,
                self._read,
                params=(
                    since if since is not None else -np.inf,
                    until if until is not None else np.inf,
                ),
            )

    # -- nodes -------------------------------------------------------------------------
    def upsert_node(self, node: str, meta: dict[str, Any]) -> None:
        values = {k: meta.get(k) for k in NODE_FIELDS}
        values["pool"] = values["pool"] or "default"
        values["labels"] = orjson.dumps(values["labels"] or {}).decode()
        with self.transaction() as conn:
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
        with self.transaction() as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO events (node, ts, kind, reason, dedup_key)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (e["node"], e["ts"], e["kind"], e.get("reason", ""), e.get("dedup_key"))
                    for e in events
                ],
            )
            return conn.total_changes - before

    def events_frame(self) -> pd.DataFrame:
        with self._read_lock:
            return pd.read_sql_query(
                "SELECT node, ts, kind, reason FROM events ORDER BY ts, id", self._read
            )

    # -- risk history ------------------------------------------------------------------
    def append_risk(self, frame: pd.DataFrame) -> None:
        p_fail = frame["p_fail"].astype(float)
        rows = zip(
            frame["node"].tolist(), frame["ts"].tolist(), frame["risk"].tolist(),
            frame["online"].tolist(), frame["batch"].tolist(),
            p_fail.where(p_fail.notna(), None).tolist(), frame["trend"].tolist(),
            [orjson.dumps(w).decode() for w in frame["why"]],
            strict=True,
        )  # fmt: skip
        with self.transaction() as conn:
            conn.executemany("INSERT OR REPLACE INTO risk VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def risk_history(self, node: str, since: float = -np.inf, limit: int = 5000) -> pd.DataFrame:
        with self._read_lock:
            return (
                pd.read_sql_query(
                    "SELECT ts, risk, online, batch, p_fail, trend, why FROM risk"
                    " WHERE node = ? AND ts >= ?"
                    " ORDER BY ts DESC LIMIT ?",
                    self._read,
                    params=(node, since, limit),
                )
                .iloc[::-1]
                .reset_index(drop=True)
            )

    # -- actions and node state ----------------------------------------------------------
    def actions(self, *, node: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        cols = (
            "id",
            "ts",
            "node",
            "pool",
            "action",
            "reason",
            "risk",
            "executed",
            "dry_run",
            "status",
            "detail",
            "wall_ts",
        )
        where, params = ("WHERE node = ?", [node]) if node else ("", [])
        rows = self._query(
            f"SELECT {', '.join(cols)} FROM actions {where} ORDER BY id DESC LIMIT ?",
            [*params, limit],
        )
        out = [dict(zip(cols, row, strict=True)) for row in rows]
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
            return cursor.rowcount

    def action_counts(self) -> dict[tuple[str, str], int]:
        """How many audit-log entries there are per (action, status)."""
        rows = self._query("SELECT action, status, count(*) FROM actions GROUP BY action, status")
        return {(r[0], r[1]): int(r[2]) for r in rows}

    # -- meta --------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO meta VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                (key, value),
            )

    # -- API keys ----------------------------------------------------------------------
    def add_api_key(
        self, *, name: str, scope: str, key_hash: str, created: float, only_if_none: bool = False
    ) -> int | None:
        """Store a key's hash; its id. ``only_if_none``: only into an empty table, else None."""
        with self.transaction() as conn:
            # Checked inside the write transaction, so two first starts make one key.
            if only_if_none and conn.execute("SELECT count(*) FROM api_keys").fetchone()[0]:
                return None
            cursor = conn.execute(
                "INSERT INTO api_keys (name, scope, hash, created) VALUES (?, ?, ?, ?)",
                (name, scope, key_hash, created),
            )
            return int(cursor.lastrowid or 0)

    def api_keys(self, *, live_only: bool = False) -> list[dict[str, Any]]:
        """Every key (oldest first) with its hash; ``live_only`` leaves revoked ones out."""
        cols = ("id", "name", "scope", "hash", "created", "revoked")
        where = " WHERE revoked IS NULL" if live_only else ""
        rows = self._query(f"SELECT {', '.join(cols)} FROM api_keys{where} ORDER BY id")
        return [dict(zip(cols, row, strict=True)) for row in rows]

    def revoke_api_key(self, key_id: int, *, at: float) -> bool:
        """Mark a key revoked (an earlier revocation time is kept); False if there is none."""
        with self.transaction() as conn:
            cursor = conn.execute(
                "UPDATE api_keys SET revoked = coalesce(revoked, ?) WHERE id = ?", (at, key_id)
            )
            return cursor.rowcount > 0

    def ping(self) -> bool:
        return bool(self._query("SELECT 1"))
