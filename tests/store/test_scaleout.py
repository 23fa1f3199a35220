"""Schema migrations, latest risk, partition leases and fenced checkpoints, on both backends.

Lease expiry is simulated by moving a lease's expiry into the past in the database (no
sleeping): what is tested is the rule, on the database clock, not the passing of time.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from predictor.store import SQLiteStore, Store, store_for_url
from predictor.store.migrations import MIGRATIONS, SQLITE


def risk_frame(*rows: tuple[str, float, float], p_fail: float = np.nan) -> pd.DataFrame:
    return pd.DataFrame({
        "node": [r[0] for r in rows], "ts": [r[1] for r in rows], "risk": [r[2] for r in rows],
        "online": [0.5] * len(rows), "batch": [0.1] * len(rows), "p_fail": [p_fail] * len(rows),
        "trend": [0.0] * len(rows), "why": [[{"metric": "cpu", "score": r[2]}] for r in rows],
    })  # fmt: skip


def expire(store: Store, *, partition: int) -> None:
    """Move a lease's expiry an hour into the past (as if its holder stopped renewing)."""
    with store.transaction() as conn:
        conn.execute("UPDATE leases SET expires = expires - 3600 WHERE part = ?", (partition,))


# -- migrations --------------------------------------------------------------------------------
def test_migrations_recorded_once_and_reapplying_is_a_no_op(store: Store, store_url: str) -> None:
    newest = MIGRATIONS[-1].version
    assert store.schema_version() == newest
    versions = store._query("SELECT version, name FROM schema_version ORDER BY version")
    assert versions == [(m.version, m.name) for m in MIGRATIONS]
    assert store._migrate() == []
    again = store_for_url(store_url)
    again.close()
    assert store._query("SELECT count(*) FROM schema_version")[0][0] == len(MIGRATIONS)


def test_concurrent_starts_migrate_once(store_url: str) -> None:
    opened: list[Store] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(5)

    def start() -> None:
        try:
            barrier.wait()
            opened.append(store_for_url(store_url))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert not errors and len(opened) == 5
        rows = opened[0]._query("SELECT version FROM schema_version ORDER BY version")
        assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]
        assert all(s.ping() for s in opened)
    finally:
        for s in opened:
            s.close()


def test_a_database_newer_than_the_code_is_refused(store: Store, store_url: str) -> None:
    with store.transaction() as conn:
        conn.execute("INSERT INTO schema_version VALUES (999, 'future', 0)")
    with pytest.raises(RuntimeError, match="newer than this code"):
        store_for_url(store_url)


def test_a_file_made_before_migrations_opens_and_is_upgraded(tmp_path: Path) -> None:
    """A file the pre-migration code made (migration 1's DDL, no schema_version) opens fine."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        for statement in MIGRATIONS[0].statements:
            old.execute(SQLITE.render(statement))
        old.execute("INSERT INTO samples VALUES ('a', 'cpu', 1.0, 2.0)")
        old.executemany(
            "INSERT INTO risk VALUES (?, ?, ?, 0.5, 0.1, NULL, 0.0, '[]')",
            [("a", 1.0, 0.2), ("a", 2.0, 0.7), ("b", 1.0, 0.4)],
        )
    store = SQLiteStore(path)
    try:
        assert store.schema_version() == MIGRATIONS[-1].version
        assert store.samples_after(0, 10)[1] == 1  # the log and its positions are kept
        # migration 2 filled risk_latest from the history already there
        assert [(r["node"], r["ts"]) for r in store.latest_risk()] == [("a", 2.0), ("b", 1.0)]
    finally:
        store.close()


# -- latest risk ---------------------------------------------------------------------------------
def test_latest_risk_keeps_the_newest_point_per_node(store: Store) -> None:
    assert store.latest_risk() == []
    store.append_risk(risk_frame(("a", 1.0, 0.2), ("a", 2.0, 0.6), ("b", 1.0, 0.9)))
    store.append_risk(risk_frame(("c", 5.0, 0.1), p_fail=0.25))
    # a slower worker delivers an older point late: it joins the history, not the latest
    store.append_risk(risk_frame(("a", 1.5, 0.99)))
    latest = store.latest_risk()
    assert [(r["node"], r["ts"], r["risk"]) for r in latest] == [
        ("b", 1.0, 0.9), ("a", 2.0, 0.6), ("c", 5.0, 0.1),
    ]  # fmt: skip
    assert latest[1] == {
        "node": "a", "ts": 2.0, "risk": 0.6, "online": 0.5, "batch": 0.1, "p_fail": None,
        "trend": 0.0, "why": [{"metric": "cpu", "score": 0.6}],
    }  # fmt: skip
    assert latest[2]["p_fail"] == 0.25
    assert [r["node"] for r in store.latest_risk(top=2)] == ["b", "a"]
    assert store.latest_risk(top=0) == []
    assert [r["ts"] for r in store.latest_risk(node="a")] == [2.0]
    assert store.latest_risk(node="zz") == []
    # the same ts again (a replay) replaces it; a newer one moves it on
    store.append_risk(risk_frame(("a", 2.0, 0.3), ("a", 3.0, 0.4)))
    assert [(r["ts"], r["risk"]) for r in store.latest_risk(node="a")] == [(3.0, 0.4)]
    assert store.risk_history("a")["ts"].tolist() == [1.0, 1.5, 2.0, 3.0]
    with pytest.raises(ValueError, match="top"):
        store.latest_risk(top=-1)


# -- leases ----------------------------------------------------------------------------------------
def test_lease_acquire_renew_release_and_takeover(store: Store) -> None:
    assert store.try_acquire_lease(partition=0, worker="w1", ttl_s=30) == 1
    assert store.try_acquire_lease(partition=1, worker="w1", ttl_s=30) == 1
    assert store.try_acquire_lease(partition=0, worker="w2", ttl_s=30) is None  # held
    assert store.try_acquire_lease(partition=0, worker="w1", ttl_s=30) == 1  # already ours
    assert store.renew_leases(worker="w1", ttl_s=30) == {0: 1, 1: 1}
    assert store.renew_leases(worker="w2", ttl_s=30) == {}
    leases = store.leases()
    assert [(x["partition"], x["worker"], x["epoch"]) for x in leases] == [
        (0, "w1", 1), (1, "w1", 1),
    ]  # fmt: skip
    assert all(0 < x["expires_in_s"] <= 30 for x in leases)

    expire(store, partition=0)  # w1 stopped renewing partition 0
    assert store.renew_leases(worker="w1", ttl_s=30) == {1: 1}  # it no longer holds it
    assert store.try_acquire_lease(partition=0, worker="w2", ttl_s=30) == 2  # new owner
    assert store.try_acquire_lease(partition=0, worker="w1", ttl_s=30) is None

    store.release_lease(partition=1, worker="w2")  # not w2's: nothing happens
    assert store.renew_leases(worker="w1", ttl_s=30) == {1: 1}
    store.release_lease(partition=1, worker="w1")
    assert store.renew_leases(worker="w1", ttl_s=30) == {}
    assert store.try_acquire_lease(partition=1, worker="w2", ttl_s=30) == 2
    # w2's own lease expired and is taken again: a new tenure, a new epoch
    expire(store, partition=1)
    assert store.try_acquire_lease(partition=1, worker="w2", ttl_s=30) == 3


def test_lease_arguments_are_checked(store: Store) -> None:
    for bad in ({"ttl_s": 0}, {"ttl_s": -1.0}, {"ttl_s": float("nan")}, {"worker": ""},
                {"partition": -1}):  # fmt: skip
        args = {"partition": 0, "worker": "w", "ttl_s": 10.0, **bad}
        with pytest.raises(ValueError):
            store.try_acquire_lease(**args)  # type: ignore[arg-type]
    assert store.leases() == []


def test_only_one_of_many_racing_workers_gets_a_lease(store: Store, store_url: str) -> None:
    stores = [store_for_url(store_url) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    won: dict[str, int | None] = {}

    def race(k: int) -> None:
        barrier.wait()
        won[f"w{k}"] = stores[k].try_acquire_lease(partition=7, worker=f"w{k}", ttl_s=60)

    threads = [threading.Thread(target=race, args=(k,)) for k in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        winners = {w: e for w, e in won.items() if e is not None}
        assert len(won) == 4 and list(winners.values()) == [1]
        assert [x["worker"] for x in store.leases()] == list(winners)
    finally:
        for s in stores:
            s.close()


def test_workers_heartbeat(store: Store) -> None:
    assert store.live_workers(ttl_s=60) == []
    store.heartbeat_worker(worker="w2")
    store.heartbeat_worker(worker="w1")
    store.heartbeat_worker(worker="w1")
    assert store.live_workers(ttl_s=60) == ["w1", "w2"]
    with store.transaction() as conn:  # w2 went quiet an hour ago
        conn.execute("UPDATE workers SET seen = seen - 3600 WHERE worker = 'w2'")
    assert store.live_workers(ttl_s=60) == ["w1"]
    store.heartbeat_worker(worker="w2")
    assert store.live_workers(ttl_s=60) == ["w1", "w2"]


# -- checkpoints ---------------------------------------------------------------------------------
def test_checkpoints_are_fenced_by_the_lease(store: Store) -> None:
    assert store.load_checkpoint(partition=0) is None
    # nobody holds the lease yet: no one may write
    assert not store.save_checkpoint(partition=0, worker="w1", epoch=1, position=5, state=b"x")
    epoch = store.try_acquire_lease(partition=0, worker="w1", ttl_s=30)
    assert epoch == 1
    assert store.save_checkpoint(partition=0, worker="w1", epoch=1, position=10, state=b"s1")
    assert store.save_checkpoint(partition=0, worker="w1", epoch=1, position=20, state=b"s2")
    assert store.load_checkpoint(partition=0) == (20, b"s2")
    # a wrong epoch or another worker is refused
    assert not store.save_checkpoint(partition=0, worker="w1", epoch=2, position=30, state=b"x")
    assert not store.save_checkpoint(partition=0, worker="w2", epoch=1, position=30, state=b"x")

    expire(store, partition=0)
    # expired: the old holder is fenced off even before anyone takes over
    assert not store.save_checkpoint(partition=0, worker="w1", epoch=1, position=30, state=b"x")
    assert store.try_acquire_lease(partition=0, worker="w2", ttl_s=30) == 2
    assert store.load_checkpoint(partition=0) == (20, b"s2")  # the new owner resumes here
    assert not store.save_checkpoint(partition=0, worker="w1", epoch=1, position=40, state=b"z")
    blob = bytes(range(256)) * 4  # any bytes, NULs included
    assert store.save_checkpoint(partition=0, worker="w2", epoch=2, position=25, state=blob)
    assert store.load_checkpoint(partition=0) == (25, blob)
    assert store.load_checkpoint(partition=1) is None
