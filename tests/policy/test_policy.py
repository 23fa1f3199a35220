"""The action policy over a real SQLite store and a recording actuator."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from predictor.actuators import ActionRequest, ActuatorError
from predictor.config import Settings
from predictor.policy import DRAINED, Policy
from predictor.policy.policy import NodeTrack
from predictor.store import SQLiteStore, store_for_url

WHY = [{"metric": "memory", "score": 0.9}, {"metric": "disk_errors", "score": 0.7}]


class RecordingActuator:
    """Records every request; fails with the queued errors first (None = succeed)."""

    name = "recording"

    def __init__(self, failures: Iterable[ActuatorError | None] = ()):
        self.calls: list[ActionRequest] = []
        self.failures = list(failures)
        self._lock = threading.Lock()

    def apply(self, request: ActionRequest) -> str:
        with self._lock:
            self.calls.append(request)
            error = self.failures.pop(0) if self.failures else None
        if error is not None:
            raise error
        return f"did {request.action} {request.node}"

    def steps(self) -> list[tuple[str, str]]:
        return [(r.action, r.node) for r in self.calls]


def make_settings(db: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "db": db, "enter_threshold": 0.8, "exit_threshold": 0.4, "min_duration_s": 60.0,
        "cooldown_s": 900.0, "recovery_s": 600.0, "auto_undrain": True,
        "budget_max_nodes": 2, "budget_max_fraction": 0.5, "stale_after_s": 120.0,
        "failsafe_stale_fraction": 0.5, "failsafe_spike_fraction": 0.5, "actuator_retries": 3,
        # Off (above 1) but where a test is about it: several risky nodes in one pool at
        # once are what the budget tests are made of.
        "pool_wide_fraction": 2.0,
    }  # fmt: skip
    values.update(overrides)
    return Settings(**values)


def frame(rows: Iterable[tuple[str, float, float]], why: list[dict] | None = None) -> pd.DataFrame:
    rows = list(rows)
    return pd.DataFrame(
        {
            "node": [r[0] for r in rows],
            "ts": [float(r[1]) for r in rows],
            "risk": [float(r[2]) for r in rows],
            "why": [list(why or WHY) for _ in rows],
        }
    )


class Harness:
    """One policy over a store with a registered fleet; feeds it risk in event time."""

    def __init__(
        self,
        db: Path,
        nodes: dict[str, dict[str, Any]],
        *,
        actuator: RecordingActuator | None = None,
        register: bool = True,
        **overrides: Any,
    ):
        self.settings = make_settings(db, **overrides)
        self.store = SQLiteStore(db)
        if register:
            for node, meta in nodes.items():
                self.store.upsert_node(node, meta)
        self.fleet = list(nodes)
        self.actuator = actuator or RecordingActuator()
        self.sleeps: list[float] = []
        self.policy = Policy(
            settings=self.settings, store=self.store, actuator=self.actuator,
            sleep=self.sleeps.append,
        )  # fmt: skip
        self.last_ts: dict[str, float] = {}
        self.stale: set[str] = set()  # nodes whose data stopped arriving
        self.silent: set[str] = set()  # registered nodes never heard from

    def step(
        self, ts: float, risks: dict[str, float], node_risk: dict[str, float] | None = None
    ) -> list[dict[str, Any]]:
        """One evaluation at event time ``ts``: every fresh node reported at ``ts``."""
        for node in self.fleet:
            if node in self.silent:
                continue
            if node not in self.stale or node not in self.last_ts:
                self.last_ts[node] = 0.0 if node in self.stale else ts
        if node_risk is None:
            node_risk = {n: risks.get(n, 0.1) for n in self.fleet if n not in self.silent}
        return self.policy.decide(
            frame((n, ts, r) for n, r in risks.items()),
            node_last_ts=dict(self.last_ts),
            node_risk=node_risk,
        )

    def run(self, node: str, points: Iterable[tuple[float, float]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for ts, risk in points:
            out += self.step(ts, {node: risk})
        return out

    def history(self) -> list[tuple[str, str, str]]:
        return [(a["node"], a["action"], a["status"]) for a in reversed(self.store.actions())]

    def drained(self) -> set[str]:
        return {n for n, s in self.store.node_states().items() if s["state"] == DRAINED}


def pool(name: str, n: int, **meta: Any) -> dict[str, dict[str, Any]]:
    return {f"{name}-{i}": {"pool": name, **meta} for i in range(1, n + 1)}


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def build(
        nodes: dict[str, dict[str, Any]] | None = None, *, db: str | None = None, **kw: Any
    ) -> Harness:
        path = tmp_path / (db or f"policy-{len(made)}.db")
        h = Harness(path, nodes if nodes is not None else pool("web", 4), **kw)
        made.append(h)
        return h

    yield build
    for h in made:
        h.store.close()


def high(start: float, stop: float, risk: float = 0.95, step: float = 10.0):
    t = start
    while t <= stop:
        yield t, risk
        t += step


# -- hysteresis and minimum duration -------------------------------------------------------
def test_drains_at_enter_threshold_after_min_duration_in_dry_run_by_default(make) -> None:
    h = make()
    assert h.settings.dry_run is True  # the default
    assert h.run("web-1", [(0, 0.8), (30, 0.85), (59, 0.99)]) == []
    assert h.drained() == set()
    [act] = h.run("web-1", [(60, 0.8)])
    assert act["action"] == "drain" and act["node"] == "web-1" and act["pool"] == "web"
    assert (act["status"], act["dry_run"], act["executed"]) == ("dry-run", True, False)
    assert act["ts"] == 60 and act["risk"] == 0.8
    assert "memory=0.90" in act["reason"] and "disk_errors=0.70" in act["reason"]
    assert h.store.actions() == [act]
    assert h.store.node_states() == {
        "web-1": {"state": DRAINED, "since": 60.0, "action_id": act["id"]}
    }
    assert h.actuator.calls == []  # dry-run never touches the actuator
    # drained: further high risk records nothing more
    assert h.run("web-1", high(70, 2000, step=30)) == []


def test_nothing_starts_between_the_thresholds(make) -> None:
    h = make()
    assert h.run("web-1", high(0, 3600, risk=0.79, step=30)) == []
    assert h.store.actions() == [] and h.drained() == set()


def test_an_episode_continues_between_the_thresholds(make) -> None:
    h = make()
    # The dip keeps the clock from 0 running, but no drain fires on a risk below enter.
    assert h.run("web-1", [(0, 0.9), (20, 0.5), (40, 0.4), (60, 0.41)]) == []
    [act] = h.run("web-1", [(70, 0.85)])
    assert act["ts"] == 70 and act["status"] == "dry-run"
    assert "episode of 70s" in act["reason"]


def test_an_episode_ends_below_the_exit_threshold(make) -> None:
    h = make()
    assert h.run("web-1", [(0, 0.9), (30, 0.39), (40, 0.9), (90, 0.9)]) == []
    [act] = h.run("web-1", [(100, 0.9)])  # 60 s after the new episode began at 40
    assert act["ts"] == 100


def test_a_silence_starts_the_episode_again(make) -> None:
    # Risky and held back by the budget, then silent for ten minutes (it failed); its
    # first evaluation back still carries the risk from before, the next is low. The
    # drain must not fire on the episode begun before the silence.
    h = make(budget_max_nodes=1, budget_max_fraction=1.0)
    h.run("web-1", high(0, 60))
    assert [a["status"] for a in h.run("web-2", high(100, 200, step=20))] == ["blocked"]
    h.policy.undrain("web-1", reason="manual", ts=250.0)  # the budget frees
    assert h.run("web-2", [(800, 0.95), (860, 0.1)]) == []
    assert h.drained() == set()
    # A patchy node's gaps between evaluations are shorter than a silence: still one episode.
    [act] = h.run("web-3", [(0, 0.95), (200, 0.95)])
    assert act["ts"] == 200 and "episode of 200s" in act["reason"]


def test_minimum_duration_is_event_time_and_rows_are_sorted(make) -> None:
    h = make()
    rows = [("web-1", t, 0.95) for t in (60, 50, 40, 30, 20, 10, 0)]  # arrives unsorted
    fresh = dict.fromkeys(h.fleet, 60.0)
    [act] = h.policy.decide(frame(rows), node_last_ts=fresh, node_risk={"web-1": 0.95})
    assert act["ts"] == 60.0


def test_non_finite_risk_neither_starts_nor_ends_anything(make) -> None:
    h = make()
    assert h.run("web-1", [(t, math.nan) for t in range(0, 600, 30)]) == []
    [act] = h.run("web-1", [(600, 0.9), (630, math.nan), (660, 0.9)])
    assert act["ts"] == 660
    # a drained node is not "recovered" by missing risk
    assert h.run("web-1", [(t, math.nan) for t in range(670, 2000, 60)]) == []
    assert h.drained() == {"web-1"}


# -- cooldown ------------------------------------------------------------------------------
def test_cooldown_after_an_undrain(make) -> None:
    h = make()
    h.run("web-1", high(0, 60))
    [undrain] = h.run("web-1", high(70, 670, risk=0.1, step=20))
    assert undrain["action"] == "undrain" and undrain["ts"] == 670
    blocked = h.run("web-1", high(680, 1560, step=20))
    assert [(a["ts"], a["status"]) for a in blocked] == [(740.0, "blocked")]
    assert "cooldown" in blocked[0]["reason"]
    [again] = h.run("web-1", [(1570, 0.95)])  # 900 s after the undrain
    assert again["status"] == "dry-run"
    assert h.history() == [
        ("web-1", "drain", "dry-run"), ("web-1", "undrain", "dry-run"),
        ("web-1", "drain", "blocked"), ("web-1", "drain", "dry-run"),
    ]  # fmt: skip


# -- disruption budget ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "max_nodes", "fraction", "allowed"),
    [
        (4, 2, 0.5, 2),  # both limits say 2
        (8, 5, 0.25, 2),  # the fraction binds
        (10, 3, 1.0, 3),  # the node count binds
        (8, 1, 1.0, 1),
        (3, 5, 0.25, 1),  # a small pool still gets one slot (never its last healthy node)
        (6, 5, 0.25, 2),  # rounded up, as a PodDisruptionBudget's maxUnavailable: 1.5 -> 2
        (4, 5, 0.25, 1),
    ],
)
def test_budget_per_pool(make, size: int, max_nodes: int, fraction: float, allowed: int) -> None:
    h = make(pool("web", size), budget_max_nodes=max_nodes, budget_max_fraction=fraction)
    risky = [f"web-{i}" for i in range(1, min(size, allowed + 2) + 1)]
    node_risk = {n: 0.1 for n in h.fleet} | {risky[0]: 0.95}  # keep the spike fail-safe quiet
    for ts in range(0, 70, 10):
        h.step(ts, dict.fromkeys(risky, 0.95), node_risk=node_risk)
    assert h.drained() == set(risky[:allowed])
    statuses = [s for _, _, s in h.history()]
    assert statuses == ["dry-run"] * allowed + ["blocked"] * (len(risky) - allowed)
    for act in h.store.actions():
        if act["status"] == "blocked":
            assert "budget" in act["reason"]


def test_never_the_last_healthy_node(make) -> None:
    h = make(pool("web", 2), budget_max_nodes=5, budget_max_fraction=1.0)
    for ts in range(0, 70, 10):
        h.step(ts, {"web-1": 0.95, "web-2": 0.95})
    assert h.drained() == {"web-1"}
    [blocked] = [a for a in h.store.actions() if a["status"] == "blocked"]
    assert blocked["node"] == "web-2" and "last healthy node" in blocked["reason"]

    solo = make({"only-1": {"pool": "solo"}}, budget_max_nodes=5, budget_max_fraction=1.0)
    [act] = solo.run("only-1", high(0, 600, step=30))
    assert act["status"] == "blocked" and "last healthy" in act["reason"]
    assert "only-1" not in solo.drained()


@pytest.mark.parametrize("how", ["fresh", "stale", "silent"])
def test_stale_nodes_do_not_count_as_healthy(make, how: str) -> None:
    h = make(pool("web", 3), budget_max_nodes=5, budget_max_fraction=1.0)
    if how == "stale":
        h.stale.add("web-3")  # reported at t=0, then nothing
    elif how == "silent":
        h.silent.add("web-3")  # registered, never reported
    for ts in range(200, 270, 10):
        h.step(ts, {"web-1": 0.95, "web-2": 0.95})
    if how == "fresh":
        assert h.drained() == {"web-1", "web-2"}
    else:
        assert h.drained() == {"web-1"}
        assert "last healthy" in h.store.actions(node="web-2")[0]["reason"]


def test_budgets_are_per_pool_and_unregistered_nodes_are_pool_default(make) -> None:
    h = make(pool("a", 4) | pool("b", 4), budget_max_nodes=1, budget_max_fraction=1.0)
    for ts in range(0, 70, 10):
        h.step(ts, {"a-1": 0.95, "a-2": 0.95, "b-1": 0.95})
    assert h.drained() == {"a-1", "b-1"}
    assert [a["pool"] for a in h.store.actions(node="b-1")] == ["b"]

    loose = make(pool("n", 4), register=False, budget_max_nodes=1, budget_max_fraction=1.0)
    for ts in range(0, 70, 10):
        loose.step(ts, {"n-1": 0.95, "n-2": 0.95})
    assert loose.drained() == {"n-1"}
    assert {a["pool"] for a in loose.store.actions()} == {"default"}


# -- fail-safe -----------------------------------------------------------------------------
def test_failsafe_when_most_of_the_fleet_is_stale(make) -> None:
    h = make(pool("web", 6), budget_max_nodes=5, budget_max_fraction=1.0)
    h.stale |= {"web-3", "web-4", "web-5", "web-6"}
    got = h.run("web-1", high(200, 800, step=20))
    assert [a["status"] for a in got] == ["blocked"]  # recorded once, not every evaluation
    assert "fail-safe" in got[0]["reason"] and "stale" in got[0]["reason"]
    assert h.drained() == set()
    h.stale.clear()  # monitoring is back
    h.last_ts = dict.fromkeys(h.fleet, 800.0)
    [act] = h.run("web-1", [(810, 0.95)])
    assert act["status"] == "dry-run" and h.drained() == {"web-1"}


def test_failsafe_when_most_of_the_fleet_is_risky_at_once(make) -> None:
    h = make(pool("web", 6), budget_max_nodes=5, budget_max_fraction=1.0)
    spike = {"web-1": 0.95, "web-2": 0.95, "web-3": 0.95}
    for ts in range(0, 300, 20):
        h.step(ts, spike)
    assert h.drained() == set()
    assert h.history() == [(n, "drain", "blocked") for n in spike]
    assert all("risky at once" in a["reason"] for a in h.store.actions())

    calm = make(pool("db", 6), budget_max_nodes=5, budget_max_fraction=1.0)
    for ts in range(0, 70, 10):
        calm.step(ts, {"db-1": 0.95, "db-2": 0.95})
    assert calm.drained() == {"db-1", "db-2"}


def test_a_pool_wide_rise_holds_drains_back_until_it_has_passed(make) -> None:
    h = make(pool("web", 6), pool_wide_fraction=0.5, pool_wide_window_s=300.0,
             budget_max_nodes=5, budget_max_fraction=1.0)  # fmt: skip
    # A deploy: the whole pool rises above exit for two evaluations; web-1 rises further.
    for ts in (0, 10):
        h.step(ts, dict.fromkeys(h.fleet, 0.5) | {"web-1": 0.95})
    for ts in range(20, 300, 10):
        h.step(ts, {"web-1": 0.95} | dict.fromkeys(h.fleet[1:], 0.1))
    assert h.drained() == set()
    [held] = h.store.actions()  # recorded once for the episode
    assert held["status"] == "blocked" and "pool-wide: 6/6 of pool web" in held["reason"]
    # Still high once the rise is out of the window: now it is this node's own.
    h.run("web-1", high(300, 330))
    assert h.drained() == {"web-1"}


def test_a_rise_of_a_few_nodes_of_a_large_pool_is_no_pool_wide_event(make) -> None:
    h = make(pool("web", 8), pool_wide_fraction=0.5, budget_max_nodes=5,
             budget_max_fraction=1.0)  # fmt: skip
    for ts in range(0, 70, 10):
        h.step(ts, {"web-1": 0.95, "web-2": 0.5, "web-3": 0.5})
    assert h.drained() == {"web-1"}


# -- execution -----------------------------------------------------------------------------
def test_non_dry_run_executes_through_the_actuator(make) -> None:
    h = make(pool("web", 4, lb_backend="be", lb_server="srv"), dry_run=False)
    [act] = h.run("web-1", high(0, 60))
    assert (act["status"], act["executed"], act["dry_run"]) == ("done", True, False)
    assert act["detail"] == "did drain web-1"
    [req] = h.actuator.calls
    assert (req.action, req.node, req.ts, req.action_id) == ("drain", "web-1", 60.0, act["id"])
    assert req.node_meta["pool"] == "web" and req.node_meta["lb_server"] == "srv"
    assert req.reason == act["reason"] and req.risk == pytest.approx(0.95)
    [stored] = h.store.actions()
    assert (stored["status"], stored["executed"], stored["detail"]) == ("done", True, act["detail"])
    assert h.drained() == {"web-1"}


def _with_standby(**kw: Any) -> dict[str, dict[str, Any]]:
    nodes = pool("web", 4)
    nodes["web-1"]["standby"] = "spare-1"
    nodes["spare-1"] = {"pool": "spare", "lb_server": "s1"}
    return nodes


def test_failover_readies_the_standby_before_draining(make) -> None:
    h = make(_with_standby(), dry_run=False)
    [act] = h.run("web-1", high(0, 60))
    assert act["action"] == "failover" and act["status"] == "done"
    assert h.actuator.steps() == [("ready_standby", "spare-1"), ("drain", "web-1")]
    assert h.actuator.calls[0].node_meta["lb_server"] == "s1"
    assert act["detail"] == "did ready_standby spare-1; did drain web-1"


def test_failover_in_dry_run_calls_nothing(make) -> None:
    h = make(_with_standby())
    [act] = h.run("web-1", high(0, 60))
    assert (act["action"], act["status"]) == ("failover", "dry-run")
    assert h.actuator.calls == []


def test_failover_does_not_drain_when_the_standby_cannot_be_readied(make) -> None:
    actuator = RecordingActuator([ActuatorError("standby broken", final=True)])
    h = make(_with_standby(), dry_run=False, actuator=actuator)
    [act] = h.run("web-1", high(0, 60))
    assert act["status"] == "failed" and "standby broken" in act["detail"]
    assert actuator.steps() == [("ready_standby", "spare-1")]
    assert h.drained() == set()


def test_retryable_failures_are_retried_with_backoff(make) -> None:
    actuator = RecordingActuator([ActuatorError("503"), ActuatorError("503")])
    h = make(dry_run=False, actuator=actuator)
    [act] = h.run("web-1", high(0, 60))
    assert act["status"] == "done" and len(actuator.calls) == 3
    assert h.sleeps == [0.5, 1.0]
    assert h.drained() == {"web-1"}


def test_exhausted_retries_fail_and_free_the_budget(make) -> None:
    actuator = RecordingActuator([ActuatorError("503")] * 3)
    h = make(dry_run=False, actuator=actuator, budget_max_nodes=1, budget_max_fraction=1.0)
    [act] = h.run("web-1", high(0, 60))
    assert (act["status"], act["executed"]) == ("failed", False)
    assert len(actuator.calls) == 3 and h.sleeps == [0.5, 1.0]
    assert "503" in act["detail"]
    assert h.store.actions()[0]["status"] == "failed"
    assert h.drained() == set()  # not left marked drained
    [other] = h.run("web-2", high(100, 160))  # the slot is free for another node
    assert other["status"] == "done" and h.drained() == {"web-2"}


def test_final_failure_is_not_retried(make) -> None:
    actuator = RecordingActuator([ActuatorError("400 bad request", final=True)])
    h = make(dry_run=False, actuator=actuator)
    [act] = h.run("web-1", high(0, 60))
    assert act["status"] == "failed" and len(actuator.calls) == 1 and h.sleeps == []
    assert h.drained() == set()


# -- audit -----------------------------------------------------------------------------------
def test_blocked_decisions_are_recorded_once_per_episode(make) -> None:
    h = make(budget_max_nodes=1, budget_max_fraction=1.0)
    h.run("web-1", high(0, 60))
    first = h.run("web-2", high(100, 700, step=20))
    assert [a["status"] for a in first] == ["blocked"]
    assert h.run("web-2", [(710, 0.1)]) == []  # the episode ends
    second = h.run("web-2", high(720, 1000))
    assert [(a["ts"], a["status"]) for a in second] == [(780.0, "blocked")]
    assert [s for _, _, s in h.history()] == ["dry-run", "blocked", "blocked"]


# -- the way back ----------------------------------------------------------------------------
def test_automatic_undrain_after_sustained_recovery(make) -> None:
    h = make(dry_run=False)
    h.run("web-1", high(0, 60))
    assert h.run("web-1", high(70, 390, risk=0.1)) == []
    assert h.run("web-1", [(400, 0.5)]) == []  # not yet recovered: the clock restarts
    assert h.run("web-1", high(410, 1000, risk=0.1)) == []
    [act] = h.run("web-1", [(1010, 0.1)])
    assert act["action"] == "undrain" and act["status"] == "done"
    assert act["reason"].startswith("recovered")
    assert h.actuator.steps() == [("drain", "web-1"), ("undrain", "web-1")]
    assert h.drained() == set()


def test_a_silence_does_not_count_towards_recovery(make) -> None:
    h = make(dry_run=False)
    h.run("web-1", high(0, 60))
    assert h.run("web-1", high(70, 300, risk=0.1)) == []
    # Silent for an hour (an outage, a reboot); its first low risks after it start the
    # clock again: ten minutes of them, not of the silence, return it to service.
    assert h.run("web-1", high(3900, 4490, risk=0.1)) == []
    [act] = h.run("web-1", [(4500, 0.1)])
    assert act["action"] == "undrain" and act["reason"].startswith("recovered: risk 0.10")
    assert "for 600s" in act["reason"]


def test_no_automatic_undrain_when_disabled(make) -> None:
    h = make(auto_undrain=False)
    h.run("web-1", high(0, 60))
    assert h.run("web-1", high(70, 5000, risk=0.0, step=60)) == []
    assert h.drained() == {"web-1"}


def test_manual_undrain_then_cooldown(make) -> None:
    h = make(dry_run=False)
    h.run("web-1", high(0, 60))
    act = h.policy.undrain("web-1", reason="manual: disk replaced", ts=100.0)
    assert (act["action"], act["status"], act["risk"]) == ("undrain", "done", None)
    assert act["reason"] == "manual: disk replaced"
    assert h.actuator.steps()[-1] == ("undrain", "web-1")
    assert h.drained() == set()
    got = h.run("web-1", high(110, 400, step=20))  # still risky, but just returned by an operator
    assert [a["status"] for a in got] == ["blocked"] and "cooldown" in got[0]["reason"]
    assert h.drained() == set()


def test_failed_undrain_leaves_the_node_drained(make) -> None:
    actuator = RecordingActuator([None, ActuatorError("404", final=True)])
    h = make(dry_run=False, actuator=actuator)
    h.run("web-1", high(0, 60))
    act = h.policy.undrain("web-1", reason="manual", ts=100.0)
    assert act["status"] == "failed"
    assert h.drained() == {"web-1"}  # still out of service, and still counted in the budget
    [retry] = h.run("web-1", high(110, 710, risk=0.1, step=20))  # automatic recovery tries again
    assert (retry["action"], retry["status"]) == ("undrain", "done")
    assert h.drained() == set()


def test_restart_does_not_redrain_a_drained_node(make) -> None:
    h = make(db="same.db", dry_run=False, budget_max_nodes=2, budget_max_fraction=1.0)
    h.run("web-1", high(0, 60))
    [(_, first_id)] = [(n, s["action_id"]) for n, s in h.store.node_states().items()]
    h.store.close()

    again = make(db="same.db", dry_run=False, budget_max_nodes=2, budget_max_fraction=1.0)
    assert again.run("web-1", high(70, 1200, step=30)) == []
    assert again.actuator.calls == []
    assert again.store.node_states()["web-1"]["action_id"] == first_id
    # the budget remembers it too: only one more slot
    for ts in range(1300, 1370, 10):
        again.step(ts, {"web-2": 0.95, "web-3": 0.95})
    assert again.drained() == {"web-1", "web-2"}
    # and the restarted policy still brings it back after recovery
    [back] = again.run("web-1", high(1400, 2000, risk=0.1, step=30))
    assert back["action"] == "undrain" and again.actuator.steps()[-1] == ("undrain", "web-1")


# -- concurrency -----------------------------------------------------------------------------
@pytest.mark.parametrize("dry_run", [True, False])
def test_budget_holds_with_concurrent_workers(
    tmp_path: Path, store_url: str, dry_run: bool
) -> None:
    """On each backend: 8 deciders, each with its own store (like processes), one budget."""
    db = tmp_path / "settings.db"
    nodes = pool("web", 8)
    setup = store_for_url(store_url)
    for node, meta in nodes.items():
        setup.upsert_node(node, meta)
    settings = make_settings(db, dry_run=dry_run, budget_max_nodes=3, budget_max_fraction=1.0)
    actuator = RecordingActuator()
    barrier = threading.Barrier(len(nodes))
    results: dict[str, list[dict[str, Any]]] = {}
    errors: list[BaseException] = []
    fresh = dict.fromkeys(nodes, 60.0)

    def worker(node: str) -> None:
        store = store_for_url(store_url)  # its own connections, like a process
        try:
            policy = Policy(settings=settings, store=store, actuator=actuator, sleep=lambda s: None)
            rows = [(node, t, 0.95) for t in range(0, 70, 10)]
            barrier.wait()
            results[node] = policy.decide(frame(rows), node_last_ts=fresh, node_risk={node: 0.95})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert not errors
        states = setup.node_states()
        assert len(states) == 3  # never more than the budget, and the budget is used
        statuses = sorted(a["status"] for acts in results.values() for a in acts)
        ok = "dry-run" if dry_run else "done"
        assert statuses == ["blocked"] * 5 + [ok] * 3
        assert len(actuator.calls) == (0 if dry_run else 3)
        assert {r.node for r in actuator.calls} <= set(states)
    finally:
        setup.close()


def test_a_node_already_drained_is_never_drained_again(store_url: str, tmp_path: Path) -> None:
    """A worker whose view is stale (or that replays after a crash) records nothing."""
    nodes = pool("web", 4)
    store = store_for_url(store_url)
    try:
        for node, meta in nodes.items():
            store.upsert_node(node, meta)
        settings = make_settings(tmp_path / "s.db", dry_run=False, budget_max_fraction=1.0)
        fresh = dict.fromkeys(nodes, 60.0)
        first_actuator, second_actuator = RecordingActuator(), RecordingActuator()
        first = Policy(settings=settings, store=store, actuator=first_actuator)
        [drain] = first.decide(
            frame(("web-1", t, 0.95) for t in range(0, 70, 10)),
            node_last_ts=fresh, node_risk={"web-1": 0.95},
        )  # fmt: skip
        assert drain["status"] == "done" and first_actuator.steps() == [("drain", "web-1")]
        # A second worker decided to drain web-1 from a view read before that drain.
        second = Policy(settings=settings, store=store, actuator=second_actuator)
        track = NodeTrack(above_since=0.0)
        registry = store.nodes()
        assert second._act("web-1", track, 70.0, 0.95, "risk", None, registry, fresh) is None
        blocked = "cooldown: x"
        assert second._act("web-1", track, 80.0, 0.95, "risk", blocked, registry, fresh) is None
        assert second_actuator.calls == []
        assert [a["id"] for a in store.actions()] == [drain["id"]]  # nothing recorded
        assert store.node_states()["web-1"]["action_id"] == drain["id"]
    finally:
        store.close()
