"""Simulate a fleet's metrics with labelled failures and the healthy behaviour that fools rules.

Everything random is drawn from ``spec.seed``: first a *plan* (node baselines, failures,
maintenance, batch jobs, deploys, all on the step grid), then the metrics one block of
steps at a time, each block from its own seeded generator. Because a block never depends
on another, :func:`simulate` and :func:`iter_steps` render the same blocks and agree exactly.

Metric values are the same for both namings: ``cpu``, ``memory``, ``disk`` and
``error_rate`` are fractions in [0, 1], ``latency_p99`` is in seconds and ``temperature``
in degrees Celsius.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa

DAY_S = 86_400.0
HOUR_S = 3_600.0
MINUTE_S = 60.0

CANONICAL_METRICS = ("cpu", "memory", "disk", "latency_p99", "error_rate", "temperature")
PROMETHEUS_NAMES = {
    "cpu": "node_cpu_utilisation",
    "memory": "node_memory_used_ratio",
    "disk": "node_filesystem_used_ratio",
    "latency_p99": "http_request_duration_p99_seconds",
    "error_rate": "http_errors_ratio",
    "temperature": "node_hwmon_temp_celsius",
}
PRECURSOR_MODES = (
    "memory_leak",
    "disk_fill",
    "error_rate",
    "latency_degradation",
    "thermal",
    "patchy_data",
)
FAILURE_MODES = (*PRECURSOR_MODES, "sudden_crash")
FAILURE_REASONS = {
    "memory_leak": "OOM killed",
    "disk_fill": "disk full",
    "error_rate": "health check failing",
    "latency_degradation": "request timeouts",
    "thermal": "thermal shutdown",
    "patchy_data": "node unreachable",
    "sudden_crash": "kernel panic",
}
# The canonical metric the precursor of each mode shows up in (patchy_data shows up as gaps).
PRECURSOR_METRIC = {
    "memory_leak": "memory",
    "disk_fill": "disk",
    "error_rate": "error_rate",
    "latency_degradation": "latency_p99",
    "thermal": "temperature",
}

Naming = Literal["simple", "prometheus"]

_CPU, _MEM, _DISK, _LAT, _ERR, _TEMP = range(len(CANONICAL_METRICS))
_BLOCK_STEPS = 360  # fixed, so the random stream of a block never depends on the fleet size
_DAILY_PEAK_S = 15 * HOUR_S  # fleet-wide load peaks at 15:00 UTC
_MAX_JITTER = 0.4  # of a step: late scrapes on a patchy node stay inside their own step
EVENT_COLUMNS = {
    "node": "str",
    "ts": "float64",
    "kind": "str",
    "reason": "str",
    "mode": "str",
    "precursor_start_ts": "float64",
}
TRAP_COLUMNS = {"node": "str", "kind": "str", "start_ts": "float64", "end_ts": "float64"}


@dataclass(frozen=True, kw_only=True)
class FleetSpec:
    """What fleet to simulate; the same spec always gives the same fleet.

    Parameters
    ----------
    nodes, pools
        Fleet size; node ``i`` belongs to pool ``i % pools``.
    step_s
        Sampling interval in simulated seconds.
    duration_s, start_ts
        Simulated time span, starting at ``start_ts`` (unix seconds).
    seed
        Use different seeds for training and test fleets.
    failure_rate_per_node_day
        Mean failures per node per day (a node is down for 10-30 min after each).
    naming
        ``"simple"`` (``cpu``, ``memory``, ...) or ``"prometheus"`` (``node_cpu_utilisation``, ...).
    traps
        Add the healthy behaviour that fools threshold rules (see :func:`simulate`).
    modes
        Failure modes to draw from, used in turn so that all of them appear.
    """

    nodes: int = 20
    pools: int = 4
    step_s: float = 10.0
    duration_s: float = 2 * DAY_S
    start_ts: float = 1764115200.0
    seed: int = 0
    failure_rate_per_node_day: float = 0.15
    naming: Naming = "simple"
    traps: bool = True
    modes: tuple[str, ...] = FAILURE_MODES

    def __post_init__(self) -> None:
        if self.nodes < 1 or not 1 <= self.pools <= self.nodes:
            raise ValueError("need nodes >= 1 and 1 <= pools <= nodes")
        if self.step_s <= 0 or self.duration_s < self.step_s:
            raise ValueError("need step_s > 0 and duration_s >= step_s")
        if self.seed < 0 or self.failure_rate_per_node_day < 0:
            raise ValueError("seed and failure_rate_per_node_day must be >= 0")
        if self.naming not in ("simple", "prometheus"):
            raise ValueError(f"unknown naming {self.naming!r}")
        if not self.modes or set(self.modes) - set(FAILURE_MODES):
            raise ValueError(f"modes must be a non-empty subset of {FAILURE_MODES}")

    @property
    def n_steps(self) -> int:
        return math.floor(self.duration_s / self.step_s + 1e-9)

    def metric_name(self, canonical: str) -> str:
        """Name of a canonical metric (``"cpu"``, ...) under this spec's naming."""
        return PROMETHEUS_NAMES[canonical] if self.naming == "prometheus" else canonical


@dataclass
class SimulatedFleet:
    """A simulated fleet: samples, labelled events, the node registry and the traps.

    ``traps`` lists the healthy-but-alarming episodes (``node, kind, start_ts, end_ts``;
    kinds ``batch_job``, ``deploy``, ``high_baseline``, ``log_rotation``, ``memory_gc``) so
    that an evaluation can tell which false alarms each one caused.
    """

    samples: pd.DataFrame
    events: pd.DataFrame
    nodes: pd.DataFrame
    traps: pd.DataFrame
    spec: FleetSpec | None = None


@dataclass(frozen=True)
class _Episode:
    """Something that happens to some nodes over steps ``[k_start, k_end)``."""

    kind: str  # a precursor mode, "outage", "batch_job" or "deploy"
    nodes: np.ndarray
    k_start: int
    k_end: int
    shape: float = 1.0  # ramp exponent: above 1 the ramp starts slowly and accelerates
    level: float = 0.0  # kind-specific size, see _apply_effects


@dataclass
class _Plan:
    spec: FleetSpec
    node_names: list[str]
    metric_names: list[str]  # sorted, the order samples use
    metric_order: np.ndarray  # canonical index of each sorted metric name
    base: dict[str, np.ndarray]  # per-node baseline parameters
    episodes: dict[int, list[_Episode]]  # by block index
    events: pd.DataFrame
    event_steps: np.ndarray
    nodes: pd.DataFrame
    traps: pd.DataFrame


def simulate(spec: FleetSpec, progress: Callable[[float], None] | None = None) -> SimulatedFleet:
    """Simulate the whole fleet at once; ``progress`` gets the fraction done after each block.

    Besides the failures, ``spec.traps`` adds: a fleet-wide daily load peak, batch jobs pinning
    cpu near 100% for 30-90 min, pool-wide deploy blips, log-rotation sawtooth on disk, memory
    that grows and gets garbage-collected, nodes with a high but harmless baseline, planned
    maintenance reboots (silent for a few minutes) and rare missed scrapes.

    Examples
    --------
    >>> fleet = simulate(FleetSpec(nodes=4, pools=2, duration_s=3600, seed=1))
    >>> sorted(fleet.samples["metric"].unique())[:2]
    ['cpu', 'disk']
    """
    plan = _plan(spec)
    n_blocks = _n_blocks(spec)

    def render(b: int) -> pd.DataFrame:
        frame = _samples_frame(plan, *_render_block(plan, b))
        if progress is not None:
            progress((b + 1) / n_blocks)
        return frame

    samples = pd.concat(map(render, range(n_blocks)), ignore_index=True)  # arrow: no copies
    return SimulatedFleet(samples, plan.events, plan.nodes, plan.traps, spec)


def iter_steps(spec: FleetSpec) -> Iterator[tuple[float, pd.DataFrame, pd.DataFrame]]:
    """Yield ``(ts, samples, events)`` step by step: the same fleet as :func:`simulate`.

    A patchy node's samples may arrive up to 0.4 steps late; they still belong to their step.
    """
    plan = _plan(spec)
    event_bounds = np.searchsorted(plan.event_steps, np.arange(spec.n_steps + 1))
    no_events = plan.events.iloc[:0]  # copy-on-write makes sharing it safe
    for b in range(_n_blocks(spec)):
        samples = _samples_frame(plan, *_render_block(plan, b))
        k0, k1 = b * _BLOCK_STEPS, min((b + 1) * _BLOCK_STEPS, spec.n_steps)
        grid = _grid(spec, k0, k1)
        bounds = [*np.searchsorted(samples["ts"].to_numpy(), grid), len(samples)]
        for i, k in enumerate(range(k0, k1)):
            step_events = no_events
            if event_bounds[k] < event_bounds[k + 1]:
                step_events = _rows(plan.events, event_bounds[k], event_bounds[k + 1])
            yield float(grid[i]), _rows(samples, bounds[i], bounds[i + 1]), step_events


def _rows(frame: pd.DataFrame, start: int, stop: int) -> pd.DataFrame:
    part = frame.iloc[start:stop]
    part.index = pd.RangeIndex(stop - start)  # cheaper than reset_index, which copies
    return part


def node_registry(spec: FleetSpec) -> pd.DataFrame:
    """The fleet's node registry (as in ``simulate(spec).nodes``) without simulating metrics."""
    return _plan(spec).nodes


def _n_blocks(spec: FleetSpec) -> int:
    return -(-spec.n_steps // _BLOCK_STEPS)


def _grid(spec: FleetSpec, k0: int, k1: int) -> np.ndarray:
    return spec.start_ts + np.arange(k0, k1, dtype=np.float64) * spec.step_s


def _plan(spec: FleetSpec) -> _Plan:
    rng = np.random.default_rng([spec.seed, 0])
    n, n_steps = spec.nodes, spec.n_steps
    width = max(3, len(str(n - 1)))
    names = [f"node-{i:0{width}d}" for i in range(n)]
    metric_names = [spec.metric_name(m) for m in CANONICAL_METRICS]
    order = np.argsort(metric_names)
    base = _baselines(spec, rng)
    registry = _registry(spec, names, rng)
    episodes: list[_Episode] = []
    events: list[dict] = []
    traps: list[dict] = []
    busy: list[list[tuple[int, int]]] = [[] for _ in range(n)]  # per node, in steps

    def steps(seconds: float) -> int:
        return max(1, round(seconds / spec.step_s))

    def ts(k: int) -> float:
        return spec.start_ts + k * spec.step_s

    def add_event(node: int, k: int, kind: str, reason: str, mode: str, pre_k: int = -1) -> None:
        if k < n_steps:
            pre_ts = ts(pre_k) if pre_k >= 0 else math.nan
            row = dict(node=names[node], ts=ts(k), kind=kind, reason=reason, mode=mode)
            events.append(row | {"precursor_start_ts": pre_ts})

    def claim(node: int, k_start: int, k_end: int, margin: int) -> bool:
        if any(k_end + margin > a and k_start < b + margin for a, b in busy[node]):
            return False
        busy[node].append((k_start, k_end))
        return True

    warmup = steps(min(HOUR_S, spec.duration_s / 4))  # every precursor has a baseline before it
    hour = steps(HOUR_S)
    modes = _cycle(rng, spec.modes)
    rate = spec.failure_rate_per_node_day
    mode = next(modes)
    for node in range(n if rate > 0 else 0):
        cursor = warmup
        while True:
            pre = 0 if mode == "sudden_crash" else steps(_log_uniform(rng, 20, 180) * MINUTE_S)
            k_fail = cursor + pre + steps(rng.exponential(DAY_S / rate))
            if k_fail >= n_steps:
                break  # the next node gets this mode, so that modes stay in rotation
            k_recover = k_fail + steps(rng.uniform(10, 30) * MINUTE_S)
            claim(node, k_fail - pre, k_recover, 0)
            if pre:
                shape = rng.uniform(1.0, 2.5)
                level = _mode_level(rng, mode)
                episodes.append(
                    _Episode(mode, np.array([node]), k_fail - pre, k_fail, shape, level)
                )
            episodes.append(_Episode("outage", np.array([node]), k_fail, k_recover))
            reason = FAILURE_REASONS[mode]
            add_event(node, k_fail, "failure", reason, mode, k_fail - pre if pre else -1)
            add_event(node, k_recover, "recovery", "restarted", mode)
            cursor = k_recover + hour
            mode = next(modes)

    if spec.traps:
        days = spec.duration_s / DAY_S
        # Planned reboots go silent like a failure but are labelled maintenance.
        for node in range(n):
            for _ in range(rng.poisson(0.1 * days)):
                k = int(rng.integers(warmup, n_steps))
                k_end = k + steps(rng.uniform(2, 8) * MINUTE_S)
                if claim(node, k, k_end, hour):
                    episodes.append(_Episode("outage", np.array([node]), k, k_end))
                    add_event(node, k, "maintenance", "planned reboot", "maintenance")
                    add_event(node, k_end, "recovery", "maintenance done", "maintenance")
        # Batch jobs pin cpu (and with it heat and latency), on healthy stretches only.
        for node in rng.choice(n, size=max(1, round(0.3 * n)), replace=False):
            for _ in range(rng.poisson(1.5 * days)):
                k = int(rng.integers(0, n_steps))
                k_end = k + steps(rng.uniform(30, 90) * MINUTE_S)
                if claim(node, k, k_end, hour):
                    level = rng.uniform(0.95, 1.0)
                    episodes.append(_Episode("batch_job", np.array([node]), k, k_end, level=level))
                    traps.append(_trap(names[node], "batch_job", ts(k), ts(k_end)))
        # A deploy hits every node of one pool at once.
        for pool in range(spec.pools):
            members = np.arange(pool, n, spec.pools)
            for _ in range(rng.poisson(0.6 * days)):
                k = int(rng.integers(warmup, n_steps))
                k_end = k + steps(rng.uniform(2, 8) * MINUTE_S)
                episodes.append(_Episode("deploy", members, k, k_end, level=rng.uniform(0.5, 1)))
                traps.extend(_trap(names[m], "deploy", ts(k), ts(k_end)) for m in members)
        for kind, key in (
            ("high_baseline", "high"),
            ("log_rotation", "rot_growth"),
            ("memory_gc", "gc_amp"),
        ):
            for i in np.flatnonzero(base[key] > 0):
                traps.append(_trap(names[i], kind, spec.start_ts, ts(n_steps)))

    by_block: dict[int, list[_Episode]] = {}
    for ep in episodes:
        for b in range(ep.k_start // _BLOCK_STEPS, (ep.k_end - 1) // _BLOCK_STEPS + 1):
            by_block.setdefault(b, []).append(ep)
    event_frame = _typed(events, EVENT_COLUMNS).sort_values(["ts", "node"], ignore_index=True)
    event_steps = np.rint((event_frame["ts"].to_numpy() - spec.start_ts) / spec.step_s)
    return _Plan(
        spec=spec,
        node_names=names,
        metric_names=[metric_names[i] for i in order],
        metric_order=order,
        base=base,
        episodes=by_block,
        events=event_frame,
        event_steps=event_steps.astype(np.int64),
        nodes=registry,
        traps=_typed(traps, TRAP_COLUMNS).sort_values(
            ["start_ts", "node", "kind"], ignore_index=True
        ),
    )


def _mode_level(rng: np.random.Generator, mode: str) -> float:
    """How far a precursor goes: peak error ratio, latency factor, temperature, gap ratio."""
    ranges = {
        "error_rate": (0.15, 0.5),
        "latency_degradation": (5.0, 15.0),
        "thermal": (92.0, 100.0),
        "patchy_data": (0.7, 0.95),
    }
    return rng.uniform(*ranges[mode]) if mode in ranges else 0.0


def _trap(node: str, kind: str, start_ts: float, end_ts: float) -> dict:
    return dict(node=node, kind=kind, start_ts=start_ts, end_ts=end_ts)


def _baselines(spec: FleetSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = spec.nodes
    zeros = np.zeros(n)
    base = {
        "cpu": rng.uniform(0.15, 0.45, n),
        "mem": rng.uniform(0.30, 0.60, n),
        "disk": rng.uniform(0.20, 0.55, n),
        "lat": rng.uniform(0.05, 0.20, n),
        "err": rng.uniform(0.001, 0.01, n),
        "ambient": rng.uniform(35, 48, n),
        "wander_amp": rng.uniform(0.01, 0.05, n),
        "wander_period": rng.uniform(1, 6, n) * HOUR_S,
        "wander_phase": rng.uniform(0, 2 * np.pi, n),
        "diurnal": zeros.copy(),
        "gc_amp": zeros.copy(),
        "gc_period": np.full(n, DAY_S),
        "gc_phase": rng.uniform(0, DAY_S, n),
        "rot_growth": zeros.copy(),
        "rot_phase": rng.uniform(0, DAY_S, n),
        "high": zeros.copy(),
    }
    if spec.traps:
        base["diurnal"] = rng.uniform(0.25, 0.45, n)
        # Log rotation: disk climbs for a day towards a high peak, then drops back.
        rotating = rng.random(n) < 0.5
        base["rot_growth"][rotating] = rng.uniform(0.1, 0.35, rotating.sum())
        peak = rng.uniform(0.75, 0.95, rotating.sum())
        base["disk"][rotating] = peak - base["rot_growth"][rotating]
        # Garbage-collected memory: climbs for hours towards a high peak, then drops back.
        collected = rng.random(n) < 0.4
        base["gc_amp"][collected] = rng.uniform(0.15, 0.35, collected.sum())
        base["gc_period"][collected] = rng.uniform(2, 10, collected.sum()) * HOUR_S
        peak = rng.uniform(0.8, 0.93, collected.sum())
        base["mem"][collected] = peak - base["gc_amp"][collected]
        # Busy-looking nodes that are simply sized tight; they fail no more often than others.
        high = rng.choice(n, size=max(1, round(0.15 * n)), replace=False)
        base["high"][high] = 1.0
        base["cpu"][high] = rng.uniform(0.72, 0.82, high.size)
        base["mem"][high] = rng.uniform(0.82, 0.88, high.size)
        base["disk"][high] = np.maximum(base["disk"][high], rng.uniform(0.6, 0.7, high.size))
        base["diurnal"][high] = rng.uniform(0.08, 0.15, high.size)
        base["gc_amp"][high] = 0.0
        # Healthy disks stay below 96% even at the top of a rotation cycle.
        base["disk"] = np.minimum(base["disk"], 0.96 - base["rot_growth"])
    return base


def _registry(spec: FleetSpec, names: list[str], rng: np.random.Generator) -> pd.DataFrame:
    pools = [f"pool-{i % spec.pools}" for i in range(spec.nodes)]
    standby: list[str | None] = []
    for i in range(spec.nodes):
        peers = [j for j in range(i % spec.pools, spec.nodes, spec.pools) if j != i]
        has_standby = bool(peers) and rng.random() < 0.7
        standby.append(names[int(rng.choice(peers))] if has_standby else None)
    records = [
        dict(node=name, pool=pool, lb_backend=pool, lb_server=name, standby=spare, health_url=None)
        for name, pool, spare in zip(names, pools, standby, strict=True)
    ]
    return nodes_frame(records)


def nodes_frame(records: list[dict]) -> pd.DataFrame:
    """The node registry as a frame; ``standby`` and ``health_url`` keep ``None`` as is."""
    frame = pd.DataFrame(records, columns=["node", "pool", "lb_backend", "lb_server"])
    frame = frame.astype("str")
    for column in ("standby", "health_url"):
        frame[column] = pd.Series([r.get(column) for r in records], dtype=object)
    return frame


def _typed(records: list[dict], columns: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame(records, columns=list(columns)).astype(columns)


def _cycle(rng: np.random.Generator, modes: tuple[str, ...]) -> Iterator[str]:
    # Shuffled rounds rather than independent draws, so a small fleet still shows every mode.
    while True:
        yield from (str(m) for m in rng.permutation(list(modes)))


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _render_block(plan: _Plan, b: int) -> tuple[np.ndarray, ...]:
    """Samples of block ``b`` as (node index, metric index, ts, value), sorted."""
    spec, base = plan.spec, plan.base
    k0, k1 = b * _BLOCK_STEPS, min((b + 1) * _BLOCK_STEPS, spec.n_steps)
    steps, n = k1 - k0, spec.nodes
    grid = _grid(spec, k0, k1)
    t = grid[:, None]
    rng = np.random.default_rng([spec.seed, 1, b])
    noise = rng.standard_normal((len(CANONICAL_METRICS), steps, n), dtype=np.float32)
    drop_draw = rng.random((steps, n, len(CANONICAL_METRICS)))
    jitter_draw = rng.random((steps, n))

    load = 1 + base["diurnal"] * np.cos(2 * np.pi * (t - _DAILY_PEAK_S) / DAY_S)
    wander = base["wander_amp"] * np.sin(
        2 * np.pi * t / base["wander_period"] + base["wander_phase"]
    )
    cpu = base["cpu"] * load + wander
    active = [(ep, *_span(ep, k0, k1)) for ep in plan.episodes.get(b, [])]
    for ep, rows, ramp in active:
        cols = ep.nodes
        if ep.kind == "batch_job":
            cpu[rows, cols] = np.maximum(cpu[rows, cols], ep.level)
        elif ep.kind == "deploy":
            cpu[rows, cols] += 0.25 * ep.level
        elif ep.kind == "thermal":
            cpu[rows, cols] += 0.3 * ramp  # throttled cores need more cycles for the same work
    cpu = np.clip(cpu, 0.01, 1.0)

    # Temperature and latency follow the noiseless load, so the three stay correlated.
    values = np.empty((steps, n, len(CANONICAL_METRICS)))
    values[..., _CPU] = cpu + 0.02 * noise[_CPU]
    values[..., _TEMP] = base["ambient"] + 30 * cpu + 0.4 * noise[_TEMP]
    values[..., _LAT] = base["lat"] * (1 + 4 * cpu**4) * np.exp(0.08 * noise[_LAT])
    values[..., _ERR] = base["err"] * load * np.exp(0.3 * noise[_ERR])
    gc_cycle = np.mod((t - base["gc_phase"]) / base["gc_period"], 1.0)
    values[..., _MEM] = base["mem"] + base["gc_amp"] * gc_cycle + 0.004 * noise[_MEM]
    rotation_cycle = np.mod((t - base["rot_phase"]) / DAY_S, 1.0)
    values[..., _DISK] = base["disk"] + base["rot_growth"] * rotation_cycle
    values[..., _DISK] += 0.0005 * noise[_DISK]

    drop_p = np.full((steps, n), 0.001 if spec.traps else 0.0)  # rare missed scrapes
    jitter = np.zeros((steps, n))
    silent = np.zeros((steps, n), dtype=bool)
    for ep, rows, ramp in active:
        affected = values[rows][:, ep.nodes]
        if _apply_effects(ep, affected, ramp):
            values[rows, ep.nodes] = affected
        elif ep.kind == "patchy_data":
            drop_p[rows, ep.nodes] = np.maximum(drop_p[rows, ep.nodes], ep.level * ramp)
            late = _MAX_JITTER * spec.step_s * ramp
            jitter[rows, ep.nodes] = late * jitter_draw[rows, ep.nodes]
        elif ep.kind == "outage":
            silent[rows, ep.nodes] = True
    for m in (_CPU, _MEM, _DISK, _ERR):
        values[..., m] = np.clip(values[..., m], 0.0, 1.0)

    # Boolean masks on (step, node, metric) arrays keep the rows in ts-node-metric order.
    order = plan.metric_order
    present = ((drop_draw >= drop_p[..., None]) & ~silent[..., None])[..., order]
    shape = present.shape
    ts = np.broadcast_to((grid[:, None] + np.round(jitter, 3))[..., None], shape)[present]
    node_i = np.broadcast_to(np.arange(n, dtype=np.int32)[None, :, None], shape)[present]
    metric_i = np.broadcast_to(np.arange(shape[2], dtype=np.int32), shape)[present]
    value = np.round(values[..., order][present], 6)
    if jitter.any():
        # Stable, so equal timestamps keep their node-then-metric order.
        by_ts = np.argsort(ts, kind="stable")
        node_i, metric_i, ts, value = node_i[by_ts], metric_i[by_ts], ts[by_ts], value[by_ts]
    return node_i, metric_i, ts, value


def _span(ep: _Episode, k0: int, k1: int) -> tuple[slice, np.ndarray]:
    """Rows of the block inside the episode, and the episode's ramp (0 -> 1) over them."""
    first, last = max(ep.k_start, k0), min(ep.k_end, k1)
    progress = (np.arange(first, last) - ep.k_start) / (ep.k_end - ep.k_start)
    return slice(first - k0, last - k0), (progress**ep.shape)[:, None]


def _apply_effects(ep: _Episode, v: np.ndarray, ramp: np.ndarray) -> bool:
    """Apply an episode's effect on metric values ``v`` (its rows and nodes) in place.

    Returns False for episodes that leave the values alone.
    """
    if ep.kind == "deploy":
        v[..., _LAT] *= 1 + 1.5 * ep.level
        v[..., _ERR] += 0.06 * ep.level
    elif ep.kind == "memory_leak":
        v[..., _MEM] += (1.02 - v[..., _MEM]) * ramp  # overshoots so the end is pinned at 100%
        v[..., _LAT] *= 1 + 2 * ramp**4  # swapping just before the OOM kill
    elif ep.kind == "disk_fill":
        v[..., _DISK] += (1.02 - v[..., _DISK]) * ramp
        v[..., _ERR] += 0.1 * ramp**6  # failed writes once nearly full
    elif ep.kind == "error_rate":
        v[..., _ERR] += ep.level * ramp
    elif ep.kind == "latency_degradation":
        v[..., _LAT] *= 1 + (ep.level - 1) * ramp
    elif ep.kind == "thermal":
        v[..., _TEMP] += (ep.level - v[..., _TEMP]) * ramp
        v[..., _LAT] *= 1 + ramp
    else:
        return False
    return True


def _samples_frame(
    plan: _Plan, node_i: np.ndarray, metric_i: np.ndarray, ts: np.ndarray, value: np.ndarray
) -> pd.DataFrame:
    # Arrow's take builds the string columns without one Python object per sample.
    return pd.DataFrame(
        {
            "node": pa.array(plan.node_names).take(pa.array(node_i)).to_pandas(),
            "metric": pa.array(plan.metric_names).take(pa.array(metric_i)).to_pandas(),
            "ts": ts,
            "value": value,
        }
    )
