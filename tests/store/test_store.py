"""The store on both backends (SQLite file, PostgreSQL database): ordering, durability,
upserts, migrations, leases and checkpoints, concurrency. ``store`` and ``store_url`` come
from tests/conftest.py, once per backend."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from predictor.ingest import SampleBatch
from predictor.store import SQLiteStore, Store, open_store, store_for_url
from predictor.store.base import GroupCommit


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "sub" / "predictor.db"


@pytest.fixture
def sqlite_store(db: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(db)
    yield s
    s.close()


def batch(node: str, n: int, start: float = 0.0, metric: str = "cpu") -> SampleBatch:
    ts = start + np.arange(n, dtype=float)
    return SampleBatch.from_columns([node] * n, [metric] * n, ts, ts * 0.5)


def risk_rows(*rows: tuple[str, float, float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "node": [r[0] for r in rows],
            "ts": [r[1] for r in rows],
            "risk": [r[2] for r in rows],
            "online": [r[2] / 2 for r in rows],
            "batch": [0.1] * len(rows),
            "p_fail": [np.nan if i % 2 else 0.3 for i in range(len(rows))],
            "trend": [0.0] * len(rows),
            "why": [[{"metric": "memory", "score": r[2]}] for r in rows],
        }
    )


# -- samples -----------------------------------------------------------------------------
def test_parent_dir_created(sqlite_store: SQLiteStore, db: Path) -> None:
    assert isinstance(sqlite_store, Store)
    assert db.exists()
    assert sqlite_store.ping()


def test_append_returns_last_rowid_and_samples_after_follows_ingest_order(
    store: Store,
) -> None:
    assert store.last_sample_rowid() == 0
    assert store.append_samples(batch("a", 3, start=100)) == 3
    # An older timestamp ingested later still comes later: the log is in ingest order.
    assert store.append_samples(batch("b", 2, start=0)) == 5
    assert store.last_sample_rowid() == 5 and store.count_samples() == 5

    everything, last = store.samples_after(0, 100)
    assert last == 5
    assert everything.node.tolist() == ["a", "a", "a", "b", "b"]
    assert everything.ts.tolist() == [100.0, 101.0, 102.0, 0.0, 1.0]
    assert everything.value.tolist() == [50.0, 50.5, 51.0, 0.0, 0.5]
    assert everything.ts.dtype == np.float64

    # The log is read in whole batches: a limit inside a batch still returns all of it.
    first, last = store.samples_after(0, 2)
    assert (first.ts.tolist(), last) == ([100.0, 101.0, 102.0], 3)
    rest, last = store.samples_after(3, 1)
    assert (rest.node.tolist(), last) == (["b", "b"], 5)
    none, last = store.samples_after(5, 100)
    assert (len(none), last) == (0, 5)


def test_empty_append_keeps_rowid(store: Store) -> None:
    assert store.append_samples(SampleBatch.empty()) == 0
    store.append_samples(batch("a", 4))
    assert store.append_samples(SampleBatch.empty()) == 4
    assert store.count_samples() == 4


def test_samples_frame_filters_by_time_in_ingest_order(store: Store) -> None:
    store.append_samples(batch("a", 5, start=10))
    store.append_samples(batch("b", 5, start=0))
    frame = store.samples_frame()
    assert list(frame.columns) == ["node", "metric", "ts", "value"]
    assert len(frame) == 10
    window = store.samples_frame(since=3, until=11)
    assert window["ts"].tolist() == [10.0, 11.0, 3.0, 4.0]


def test_committed_samples_are_visible_to_another_store(store: Store, store_url: str) -> None:
    other = store_for_url(store_url)  # its own connections, like another process
    try:
        store.append_samples(batch("a", 3))
        assert other.count_samples() == 3
        assert other.samples_after(0, 10)[1] == 3
    finally:
        other.close()


def test_everything_survives_close_and_reopen(store_url: str) -> None:
    first = store_for_url(store_url)
    first.append_samples(batch("a", 3))
    first.upsert_node("a", {"pool": "web", "standby": "b", "labels": {"rack": "r1"}})
    first.add_events([{"node": "a", "ts": 5.0, "kind": "failure", "reason": "disk"}])
    first.append_risk(risk_rows(("a", 1.0, 0.9)))
    first.set_meta("model", "v3")
    with first.transaction() as conn:
        conn.execute("INSERT INTO node_state VALUES ('a', 'drained', 1.0, 7)")
    first.close()

    again = store_for_url(store_url)
    try:
        samples, last = again.samples_after(0, 10)
        assert (samples.node.tolist(), last) == (["a", "a", "a"], 3)
        assert again.append_samples(batch("a", 1, start=9)) == 4
        assert again.node("a") == {
            "pool": "web", "lb_backend": None, "lb_server": None, "standby": "b",
            "health_url": None, "labels": {"rack": "r1"},
        }  # fmt: skip
        assert again.events_frame()["reason"].tolist() == ["disk"]
        assert again.risk_history("a")["risk"].tolist() == [0.9]
        assert again.get_meta("model") == "v3"
        assert again.node_states() == {"a": {"state": "drained", "since": 1.0, "action_id": 7}}
    finally:
        again.close()


def test_memory_store_reads_its_own_writes() -> None:
    mem = SQLiteStore(":memory:")
    try:
        assert mem.append_samples(batch("a", 2)) == 2
        assert mem.count_samples() == 2
        assert mem.samples_after(0, 10)[0].node.tolist() == ["a", "a"]
    finally:
        mem.close()


# -- nodes, events, risk, actions, meta ----------------------------------------------------
def test_node_upsert_and_list(store: Store) -> None:
    assert store.nodes() == {} and store.node("x") is None
    store.upsert_node("a", {})
    store.upsert_node("b", {"pool": "db", "lb_backend": "be", "lb_server": "srv-b",
                            "health_url": "http://b/health", "labels": {"az": "1"}})  # fmt: skip
    assert store.node("a") == {
        "pool": "default", "lb_backend": None, "lb_server": None, "standby": None,
        "health_url": None, "labels": {},
    }  # fmt: skip
    store.upsert_node("a", {"pool": "web", "standby": "b"})
    nodes = store.nodes()
    assert set(nodes) == {"a", "b"}
    assert nodes["a"]["pool"] == "web" and nodes["a"]["standby"] == "b"
    assert nodes["b"]["lb_server"] == "srv-b" and nodes["b"]["labels"] == {"az": "1"}
    # An upsert replaces the whole entry: fields left out are cleared.
    store.upsert_node("b", {"pool": "db"})
    assert store.nodes()["b"]["lb_server"] is None


def test_events_ordered_by_time(store: Store) -> None:
    store.add_events([
        {"node": "a", "ts": 20.0, "kind": "failure", "reason": "oom"},
        {"node": "b", "ts": 10.0, "kind": "maintenance"},
    ])  # fmt: skip
    store.add_events([{"node": "c", "ts": 10.0, "kind": "failure"}])
    frame = store.events_frame()
    assert frame["node"].tolist() == ["b", "c", "a"]
    assert frame["reason"].tolist() == ["", "", "oom"]
    assert frame["kind"].tolist() == ["maintenance", "failure", "failure"]


def test_risk_points_are_upserted_per_node_and_ts(store: Store) -> None:
    store.append_risk(risk_rows(("a", 1.0, 0.2), ("a", 2.0, 0.3), ("b", 1.0, 0.9)))
    # A replay after a crash writes the same points again, possibly with new values.
    store.append_risk(risk_rows(("a", 2.0, 0.7), ("a", 3.0, 0.8)))
    history = store.risk_history("a")
    assert history["ts"].tolist() == [1.0, 2.0, 3.0]
    assert history["risk"].tolist() == [0.2, 0.7, 0.8]
    assert history["why"].tolist()[1] == '[{"metric":"memory","score":0.7}]'
    p_fail = history["p_fail"].tolist()
    assert p_fail[:2] == [0.3, 0.3] and pd.isna(p_fail[2])  # NaN stored as NULL
    assert store.risk_history("a", since=2.0)["ts"].tolist() == [2.0, 3.0]
    assert store.risk_history("a", limit=2)["ts"].tolist() == [2.0, 3.0]  # the latest, ascending
    count = store._query("SELECT count(*) FROM risk")[0][0]
    assert count == 4


def test_actions_and_node_state(store: Store) -> None:
    with store.transaction() as conn:
        for ts, node in [(1.0, "a"), (2.0, "b"), (3.0, "a")]:
            conn.execute(
                "INSERT INTO actions (ts, node, pool, action, reason, risk, executed, dry_run,"
                " status, wall_ts) VALUES (?, ?, 'web', 'drain', 'r', 0.9, 1, 0, 'done', 0)",
                (ts, node),
            )
        conn.execute("INSERT INTO node_state VALUES ('a', 'drained', 3.0, 3)")
    acts = store.actions()
    assert [a["id"] for a in acts] == [3, 2, 1]  # newest first
    assert acts[0]["executed"] is True and acts[0]["dry_run"] is False
    assert [a["ts"] for a in store.actions(node="a")] == [3.0, 1.0]
    assert len(store.actions(limit=1)) == 1
    assert store.node_states() == {"a": {"state": "drained", "since": 3.0, "action_id": 3}}


def test_failed_transaction_rolls_back_and_store_stays_usable(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction() as conn:
        conn.execute("INSERT INTO meta VALUES ('k', 'v')")
        raise RuntimeError("boom")
    assert store.get_meta("k") is None
    store.set_meta("k", "v2")
    assert store.get_meta("k") == "v2"


def test_meta(store: Store) -> None:
    assert store.get_meta("x") is None and store.get_meta("x", "d") == "d"
    store.set_meta("x", "1")
    store.set_meta("x", "2")
    assert store.get_meta("x") == "2"


# -- durability settings and concurrency -----------------------------------------------------
def test_wal_and_synchronous_full_on_both_connections(sqlite_store: SQLiteStore, db: Path) -> None:
    for conn in (sqlite_store._write, sqlite_store._read):
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    fresh = sqlite3.connect(db)  # WAL is a property of the file
    try:
        assert fresh.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        fresh.close()


def _hammer(stores: list[Store], threads: int, batches: int, size: int) -> list[int]:
    errors: list[BaseException] = []
    rowids: list[int] = []
    barrier = threading.Barrier(threads)

    def work(k: int) -> None:
        try:
            barrier.wait()
            for j in range(batches):
                rowids.append(stores[k % len(stores)].append_samples(
                    batch(f"n{k}", size, start=j * size)))  # fmt: skip
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert not errors
    return rowids


def _check_all_landed(store: Store, threads: int, batches: int, size: int) -> None:
    total = threads * batches * size
    assert store.count_samples() == total
    frame, last = store.samples_after(0, total + 10)
    assert last == total
    df = frame.to_frame()
    for k in range(threads):
        # each writer's samples are all there, in the order it wrote them
        assert df.loc[df["node"] == f"n{k}", "ts"].tolist() == list(
            map(float, range(batches * size))
        )


def test_concurrent_appends_from_threads_all_land(store: Store) -> None:
    rowids = _hammer([store], threads=6, batches=20, size=10)
    assert len(rowids) == 120 and max(rowids) == 1200
    # Each batch is committed whole; concurrent ones may share a commit (group commit),
    # whose callers all get the position after it.
    assert all(r % 10 == 0 for r in rowids)
    _check_all_landed(store, threads=6, batches=20, size=10)


def test_concurrent_appends_from_separate_stores_on_one_database(store_url: str) -> None:
    stores = [store_for_url(store_url) for _ in range(3)]
    try:
        rowids = _hammer(stores, threads=6, batches=10, size=5)
        assert max(rowids) == 300 and all(r % 5 == 0 for r in rowids)
        _check_all_landed(stores[0], threads=6, batches=10, size=5)
    finally:
        for s in stores:
            s.close()


def test_the_same_sample_twice_is_stored_once(store: Store) -> None:
    twice = SampleBatch.from_columns(["a", "a", "a"], ["cpu", "cpu", "mem"], [1.0, 1.0, 1.0],
                                     [0.5, 0.9, 0.2])  # fmt: skip
    last = store.append_samples(twice)  # the repeat inside the batch is dropped too
    assert store.append_samples(twice) == last  # a client retry after a lost 202
    frame = store.samples_frame()
    assert len(frame) == 2 == store.count_samples()
    assert frame.loc[frame["metric"] == "cpu", "value"].tolist() == [0.5]  # first one wins
    assert len(store.samples_after(last, 10)[0]) == 0  # nothing new to score


def test_samples_arrive_exactly(store: Store) -> None:
    """Names with CSV/COPY-special characters and floats round-trip bit for bit."""
    names = ["a,b", 'q"uote', "tab\there", "new\nline", "", "ünï", "\\N", "back\\slash"]
    stamps = [1.7e9 + 0.123456789, 0.1 + 0.2, 5e-324, -3.0, 1e300, 2.0**53 + 2, 1 / 3, 7.0]
    values = [np.nextafter(1.0, 2.0), -1e-310, 123456.789, 0.0, -2.5, 1e-5, np.pi, -np.e]
    sent = SampleBatch.from_columns(names, ["m"] * 8, stamps, values)
    store.append_samples(sent)
    got, _ = store.samples_after(0, 100)
    assert got.node.tolist() == names
    assert got.ts.tobytes() == sent.ts.tobytes()
    assert got.value.tobytes() == sent.value.tobytes()


def test_urls_and_open_store(tmp_path: Path) -> None:
    from predictor.config import Settings

    mem = store_for_url("sqlite:///:memory:")
    try:
        assert isinstance(mem, SQLiteStore) and mem.ping()
    finally:
        mem.close()
    default = open_store(Settings(db=tmp_path / "x.db"))
    try:
        assert isinstance(default, SQLiteStore) and default.path == tmp_path / "x.db"
    finally:
        default.close()
    with pytest.raises(ValueError, match="unsupported database URL"):
        Settings(database_url="mysql://localhost/x")
    with pytest.raises(ValueError, match="unsupported database URL"):
        store_for_url("sqlite:///")


def test_group_commit_takes_what_queued_behind_it_and_isolates_a_bad_batch() -> None:
    calls: list[list[str]] = []
    first_inside, release = threading.Event(), threading.Event()

    def commit(batches: list[SampleBatch]) -> int:
        nodes = [str(b.node[0]) for b in batches]
        calls.append(nodes)
        if len(calls) == 1:
            first_inside.set()
            release.wait(30)
        if "bad" in nodes:
            raise ValueError("unstorable")
        return len(calls)

    group = GroupCommit(commit)
    results: dict[str, object] = {}

    def append(node: str) -> None:
        try:
            results[node] = group.append(batch(node, 1))
        except ValueError as exc:
            results[node] = exc

    first = threading.Thread(target=append, args=("a",))
    first.start()
    assert first_inside.wait(30)
    behind = [threading.Thread(target=append, args=(n,)) for n in ("b", "bad", "c")]
    for t in behind:
        t.start()
    while len(group._queue) < 3:  # all three queued behind the running commit
        time.sleep(0.001)
    release.set()
    for t in [first, *behind]:
        t.join(30)
    # One commit for the three that queued; it failed, so each was retried alone.
    assert calls[0] == ["a"] and sorted(calls[1]) == ["b", "bad", "c"]
    assert sorted(map(tuple, calls[2:])) == [("b",), ("bad",), ("c",)]
    assert isinstance(results["bad"], ValueError)
    assert all(isinstance(results[n], int) for n in ("a", "b", "c"))


def test_forget_before_deletes_old_scored_batches_but_keeps_the_log_position(store: Store) -> None:
    for day in range(3):
        store.append_samples(batch("a", 4, start=day * 86_400.0))
    store.append_risk(risk_rows(("a", 10.0, 0.5), ("a", 2 * 86_400.0, 0.6)))
    last = store.last_sample_rowid()
    # Not scored yet: no sample goes, however old.
    assert store.forget_before(ts=2 * 86_400.0, position=0) == 0
    assert store.count_samples() == 12
    assert store.forget_before(ts=2 * 86_400.0, position=last) == 2
    assert store.last_sample_rowid() == last  # positions continue from here
    assert store.samples_frame()["ts"].min() == 2 * 86_400.0
    assert store.risk_history("a")["ts"].tolist() == [2 * 86_400.0]
    # Even past everything, the newest batch stays (it carries the position).
    assert store.forget_before(ts=10 * 86_400.0, position=last) == 0
    assert store.append_samples(batch("a", 2, start=3 * 86_400.0)) == last + 2
