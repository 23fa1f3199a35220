"""Decisions from risk: hysteresis, minimum duration, cooldown, budget, fail-safe.

All durations are measured in event time (the samples' timestamps), so a replay decides
what the live service would have decided. Every decision - executed, dry-run or blocked -
is written to the ``actions`` audit table; a blocked episode is recorded once, not on
every evaluation.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from predictor.actuators import ActionRequest, Actuator, ActuatorError
from predictor.config import Settings
from predictor.store import Store

logger = logging.getLogger(__name__)
DRAINED = "drained"


@dataclass
class NodeTrack:
    """The policy's memory of one node between evaluations."""

    above_since: float | None = None
    below_since: float | None = None
    seen_ts: float = -math.inf  # the latest evaluation walked
    last_action_ts: float = -math.inf
    blocked_reason: str | None = None

    def seen_after_silence(self, ts: float, silence_s: float) -> bool:
        """Note an evaluation at ``ts``; True if the node was silent for ``silence_s`` before."""
        silent = ts - self.seen_ts > silence_s
        self.seen_ts = ts
        return silent


class Policy:
    """Turns node risk into drain / failover / undrain decisions."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        actuator: Actuator,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.settings = settings
        self.store = store
        self.actuator = actuator
        self.sleep = sleep
        self.tracks: dict[str, NodeTrack] = {}
        # Each node's latest evaluation at or above the exit threshold, for the pool-wide check.
        self.elevated_ts: dict[str, float] = {}

    # -- the fleet-wide fail-safe ------------------------------------------------------
    def failsafe_reason(
        self, *, node_last_ts: dict[str, float], node_risk: dict[str, float], now: float
    ) -> str | None:
        """Why nothing may be drained right now, or None."""
        s = self.settings
        n = len(node_last_ts)
        if not n:
            return None
        last_ts = np.fromiter(node_last_ts.values(), np.float64, n)
        stale = int(np.count_nonzero(now - last_ts > s.stale_after_s))
        if n >= 2 and stale / n >= s.failsafe_stale_fraction:
            return f"fail-safe: {stale}/{n} nodes stale (monitoring outage, not a fleet failure)"
        risks = np.fromiter(node_risk.values(), np.float64, len(node_risk))
        risky = int(np.count_nonzero(risks >= s.enter_threshold))
        # Below a handful of nodes a fraction means nothing; the budget still protects them.
        if n >= 5 and risky / n >= s.failsafe_spike_fraction:
            return f"fail-safe: {risky}/{n} nodes risky at once (global incident or bad data)"
        return None

    # -- decisions ---------------------------------------------------------------------
    def decide(
        self,
        risk: pd.DataFrame,
        *,
        node_last_ts: dict[str, float],
        node_risk: dict[str, float],
    ) -> list[dict[str, Any]]:
        """Walk risk rows in event-time order; return the actions recorded."""
        recorded: list[dict[str, Any]] = []
        if risk.empty:
            return recorded
        states = self.store.node_states()
        now = max(node_last_ts.values()) if node_last_ts else float(risk["ts"].max())
        failsafe = self.failsafe_reason(node_last_ts=node_last_ts, node_risk=node_risk, now=now)
        ordered = self._rows_that_matter(risk.sort_values("ts", kind="stable"), states)
        at_or_above_exit = ordered["risk"].to_numpy() >= self.settings.exit_threshold
        elevated = ordered.loc[at_or_above_exit, ["node", "ts"]]
        for node, ts, value, why in zip(
            ordered["node"], ordered["ts"], ordered["risk"], ordered["why"], strict=True
        ):
            if not math.isfinite(value):
                continue  # no information: neither starts, ends nor recovers anything
            track = self.tracks.setdefault(node, NodeTrack())
            if states.get(node, {}).get("state") == DRAINED:
                action = self._maybe_recover(node, track, ts, value)
            else:
                action = self._maybe_drain(
                    node, track, ts, value, why, failsafe, elevated, node_last_ts
                )
            if action:
                recorded.append(action)
                states = self.store.node_states()
        if len(elevated):  # most steps: nothing at or above exit, nothing to remember
            self.elevated_ts.update(elevated.groupby("node")["ts"].max().to_dict())
        return recorded

    def _rows_that_matter(
        self, ordered: pd.DataFrame, states: dict[str, dict[str, Any]]
    ) -> pd.DataFrame:
        """The rows to walk one by one: those of drained nodes and of nodes with a risk at or
        above the exit threshold. For every other node, all its rows are below exit, which
        only ends a started episode; that is applied here at once (most of a fleet, most of
        the time, so the walk stays proportional to the nodes that matter).
        """
        values = ordered["risk"].to_numpy(np.float64)
        codes, uniques = pd.factorize(ordered["node"].to_numpy(object))
        names = uniques.tolist()
        loud = np.bincount(
            codes, weights=values >= self.settings.exit_threshold, minlength=len(names)
        )
        seen = np.bincount(codes, weights=np.isfinite(values), minlength=len(names))
        drained = np.array([states.get(n, {}).get("state") == DRAINED for n in names], dtype=bool)
        for i in np.flatnonzero((loud == 0) & (seen > 0) & ~drained).tolist():
            track = self.tracks.get(names[i])
            if track is not None:
                track.above_since = None
                track.blocked_reason = None
        return ordered[((loud > 0) | drained)[codes]]

    def _maybe_recover(
        self, node: str, track: NodeTrack, ts: float, risk: float
    ) -> dict[str, Any] | None:
        s = self.settings
        silent = track.seen_after_silence(ts, s.silence_s)
        if risk >= s.exit_threshold:
            track.below_since = None
            return None
        # A silence (an outage, a reboot) is not time seen healthy: the node recovers on
        # what it reports once it is back.
        if track.below_since is None or silent:
            track.below_since = ts
        if s.auto_undrain and ts - track.below_since >= s.recovery_s:
            reason = f"risk {risk:.2f} below {s.exit_threshold} for {ts - track.below_since:.0f}s"
            return self.undrain(node, reason=f"recovered: {reason}", ts=ts, risk=risk)
        return None

    def _maybe_drain(
        self,
        node: str,
        track: NodeTrack,
        ts: float,
        risk: float,
        why: list[dict[str, Any]],
        failsafe: str | None,
        elevated: pd.DataFrame,
        node_last_ts: dict[str, float],
    ) -> dict[str, Any] | None:
        s = self.settings
        # Nor is a silence time seen at risk: a node back from one (a reboot, a failure it
        # was not drained before) starts its episode again on what it reports now.
        silent = track.seen_after_silence(ts, s.silence_s)
        if risk < s.exit_threshold or silent:
            track.above_since = None
            track.blocked_reason = None
        if risk < s.exit_threshold:
            return None
        if risk < s.enter_threshold and track.above_since is None:
            return None  # hysteresis: between the thresholds nothing starts
        track.above_since = track.above_since if track.above_since is not None else ts
        # A dip between the thresholds keeps the episode's clock running, but the action
        # itself needs the risk to be high now: never drain on a risk below enter.
        if risk < s.enter_threshold or ts - track.above_since < s.min_duration_s:
            return None
        drivers = ", ".join(f"{w['metric']}={w.get('score', 0):.2f}" for w in why[:3])
        reason = (
            f"risk {risk:.2f} >= {s.enter_threshold}, episode of {ts - track.above_since:.0f}s"
            f" ({drivers})"
        )
        blocked = failsafe
        if blocked is None and ts - track.last_action_ts < s.cooldown_s:
            blocked = f"cooldown: last action {ts - track.last_action_ts:.0f}s ago"
        registry = self.store.nodes()
        if blocked is None:
            blocked = self._pool_wide_block(node, ts, elevated, registry, node_last_ts)
        return self._act(node, track, ts, risk, reason, blocked, registry, node_last_ts)

    def _act(
        self,
        node: str,
        track: NodeTrack,
        ts: float,
        risk: float,
        reason: str,
        blocked: str | None,
        registry: dict[str, dict[str, Any]],
        node_last_ts: dict[str, float],
    ) -> dict[str, Any] | None:
        s = self.settings
        meta = registry.get(node, {"pool": "default"})
        standby = meta.get("standby")
        action = "failover" if standby else "drain"
        with self.store.transaction() as conn:
            # Another worker (or this one, replaying after a crash) drained it since this
            # decision's view was read: a node is never drained twice.
            state = conn.execute("SELECT state FROM node_state WHERE node = ?", (node,)).fetchone()
            if state is not None and state[0] == DRAINED:
                return None
            # The budget is checked and taken in one write transaction, so two deciders
            # can never both take the last slot of a pool.
            if blocked is None:
                blocked = self._budget_block(conn, node, meta, registry, node_last_ts, ts)
            if blocked is not None:
                if blocked.split(":")[0] == (track.blocked_reason or "").split(":")[0]:
                    return None
                track.blocked_reason = blocked
                return _insert_action(
                    conn, ts, node, meta, action, f"{reason}; blocked by {blocked}", risk,
                    status="blocked", dry_run=s.dry_run,
                )  # fmt: skip
            status = "dry-run" if s.dry_run else "pending"
            recorded = _insert_action(
                conn, ts, node, meta, action, reason, risk, status=status, dry_run=s.dry_run
            )
            conn.execute(
                "INSERT INTO node_state (node, state, since, action_id) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (node) DO UPDATE SET state = excluded.state,"
                " since = excluded.since, action_id = excluded.action_id",
                (node, DRAINED, ts, recorded["id"]),
            )
        track.last_action_ts = ts
        track.above_since = None
        track.below_since = None
        track.blocked_reason = None
        if not s.dry_run:
            recorded = self._execute(recorded, meta, registry)
        return recorded

    def _pool_wide_block(
        self,
        node: str,
        ts: float,
        elevated: pd.DataFrame,
        registry: dict[str, dict[str, Any]],
        node_last_ts: dict[str, float],
    ) -> str | None:
        """Why draining ``node`` cannot help: most of its pool rose with it (a deploy, a
        shared dependency), or None. Asked only when a drain is due, so rarely."""
        s = self.settings
        pool, members = _pool_of(node, registry.get(node, {}), registry, node_last_ts)
        reporting = {m for m in members if ts - node_last_ts.get(m, -math.inf) <= s.stale_after_s}
        since = ts - s.pool_wide_window_s
        in_window = elevated["ts"].between(since, ts).to_numpy()
        risen = set(elevated["node"].to_numpy()[in_window].tolist())
        risen |= {m for m in reporting if self.elevated_ts.get(m, -math.inf) >= since}
        risen &= reporting | {node}
        if len(risen) < max(3, s.pool_wide_fraction * len(reporting)):
            return None
        return (
            f"pool-wide: {len(risen)}/{len(reporting)} of pool {pool} at risk >= "
            f"{s.exit_threshold} within {s.pool_wide_window_s:.0f}s (a deploy or a shared "
            "dependency: draining one node cannot help)"
        )

    def _budget_block(
        self,
        conn: Any,
        node: str,
        meta: dict[str, Any],
        registry: dict[str, dict[str, Any]],
        node_last_ts: dict[str, float],
        now: float,
    ) -> str | None:
        s = self.settings
        pool, members = _pool_of(node, meta, registry, node_last_ts)
        drained = {
            row[0]
            for row in conn.execute("SELECT node FROM node_state WHERE state = ?", (DRAINED,))
        } & members
        stale = {n for n in members if now - node_last_ts.get(n, -math.inf) > s.stale_after_s}
        # The fraction rounds up, as Kubernetes rounds a PodDisruptionBudget's percentage
        # maxUnavailable (25% of 6 nodes: 2); budget_max_nodes caps it either way.
        limit = min(s.budget_max_nodes, max(1, math.ceil(s.budget_max_fraction * len(members))))
        if len(drained) >= limit:
            return f"budget: {len(drained)}/{len(members)} of pool {pool} already drained"
        healthy_after = len(members - drained - stale - {node})
        if healthy_after < 1:
            return f"budget: {node} is the last healthy node of pool {pool}"
        return None

    # -- execution -------------------------------------------------------------------
    def _execute(
        self,
        recorded: dict[str, Any],
        meta: dict[str, Any],
        registry: dict[str, dict[str, Any]],
    ) -> dict[str, Any]:
        """Run the actuator with retries and write the outcome to the audit row.

        The node's drained state follows what really happened: a failed drain is rolled
        back, and an undrain only clears the state once it succeeded.
        """
        steps = [recorded["action"]]
        if recorded["action"] == "failover":
            # The standby is made ready before the node stops taking work.
            steps = ["ready_standby", "drain"]
        details = []
        status = "done"
        try:
            for step in steps:
                target = meta.get("standby") if step == "ready_standby" else recorded["node"]
                request = ActionRequest(
                    action=step,
                    node=str(target),
                    # An unregistered standby gets no load-balancer identity of its own.
                    node_meta=registry.get(str(target), {"pool": meta.get("pool")}),
                    reason=recorded["reason"],
                    risk=float(recorded["risk"] or 0.0),
                    ts=recorded["ts"],
                    action_id=recorded["id"],
                )
                details.append(self._with_retries(request))
        except ActuatorError as exc:
            status = "failed"
            details.append(str(exc))
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE actions SET status = ?, executed = ?, detail = ? WHERE id = ?",
                (status, int(status == "done"), "; ".join(details), recorded["id"]),
            )
            undrain = recorded["action"] == "undrain"
            if (status == "failed" and not undrain) or (status == "done" and undrain):
                conn.execute("DELETE FROM node_state WHERE node = ?", (recorded["node"],))
        return {
            **recorded,
            "status": status,
            "executed": status == "done",
            "detail": "; ".join(details),
        }

    def _with_retries(self, request: ActionRequest) -> str:
        attempts = max(1, self.settings.actuator_retries)
        for attempt in range(attempts):
            try:
                return self.actuator.apply(request)
            except ActuatorError as exc:
                if exc.final or attempt == attempts - 1:
                    raise
                logger.warning("actuator %s failed (%s); retrying", self.actuator.name, exc)
                self.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def undrain(
        self, node: str, *, reason: str, ts: float, risk: float | None = None
    ) -> dict[str, Any]:
        """Return a drained node to service (automatic recovery or manual override)."""
        registry = self.store.nodes()
        meta = registry.get(node, {"pool": "default"})
        with self.store.transaction() as conn:
            recorded = _insert_action(
                conn, ts, node, meta, "undrain", reason, risk,
                status="dry-run" if self.settings.dry_run else "pending",
                dry_run=self.settings.dry_run,
            )  # fmt: skip
            if self.settings.dry_run:
                conn.execute("DELETE FROM node_state WHERE node = ?", (node,))
        track = self.tracks.setdefault(node, NodeTrack())
        track.last_action_ts = ts
        track.above_since = track.below_since = None
        if not self.settings.dry_run:
            # Until the actuator confirms, the node is still out of service (and counts
            # against the budget); _execute clears its state on success only.
            recorded = self._execute(recorded, meta, registry)
        return recorded

    # -- checkpoint ----------------------------------------------------------------------
    def export_state(self) -> dict[str, NodeTrack]:
        return dict(self.tracks)

    def import_state(self, tracks: dict[str, NodeTrack]) -> None:
        self.tracks = dict(tracks)


def _pool_of(
    node: str,
    meta: dict[str, Any],
    registry: dict[str, dict[str, Any]],
    node_last_ts: dict[str, float],
) -> tuple[str, set[str]]:
    """``node``'s pool and its members (nodes heard from but not registered: ``default``)."""
    pool = meta.get("pool") or "default"
    members = {n for n, m in registry.items() if (m.get("pool") or "default") == pool}
    members |= {n for n in node_last_ts if n not in registry and pool == "default"}
    members.add(node)
    return pool, members


def _insert_action(
    conn: Any,
    ts: float,
    node: str,
    meta: dict[str, Any],
    action: str,
    reason: str,
    risk: float | None,
    *,
    status: str,
    dry_run: bool,
) -> dict[str, Any]:
    pool = meta.get("pool") or "default"
    risk_value = None if risk is None or not np.isfinite(risk) else float(risk)
    wall = time.time()
    cursor = conn.execute(
        "INSERT INTO actions (ts, node, pool, action, reason, risk, executed, dry_run, status,"
        " detail, wall_ts) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, '', ?) RETURNING id",
        (ts, node, pool, action, reason, risk_value, int(dry_run), status, wall),
    )
    return {
        "id": int(cursor.fetchone()[0]), "ts": ts, "node": node, "pool": pool, "action": action,
        "reason": reason, "risk": risk_value, "executed": False, "dry_run": dry_run,
        "status": status, "detail": "", "wall_ts": wall,
    }  # fmt: skip
