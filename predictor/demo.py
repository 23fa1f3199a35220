"""``make run``: the service on a simulated fleet, with a live view of risk and decisions."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pandas as pd
import uvicorn
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from predictor.api import create_app
from predictor.auth import create_key, dev_key_in_force
from predictor.config import Settings
from predictor.store import open_store

DAY_S = 86_400.0


def _reset_store(settings: Settings) -> None:
    """The demo replays its own simulated days, so it starts from an empty store."""
    for path in (settings.db, settings.checkpoint_path):
        for suffix in ("", "-wal", "-shm"):
            target = path.with_name(path.name + suffix)
            target.unlink(missing_ok=True)


def _demo_key(settings: Settings) -> str:
    """The dev key in dev; otherwise a new admin key in the demo's own fresh store."""
    if dev_key_in_force(settings) and settings.dev_api_key:
        return settings.dev_api_key
    store = open_store(settings)
    try:
        return create_key(store=store, scope="admin", name="demo")[0]
    finally:
        store.close()


def _start_server(settings: Settings) -> tuple[uvicorn.Server, threading.Thread]:
    config = uvicorn.Config(
        create_app(settings), host=settings.host, port=settings.port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the API did not start on {settings.host}:{settings.port}")
        time.sleep(0.05)
    return server, thread


def _failures_view(failures: list[dict[str, Any]], actions: list[dict[str, Any]]) -> Table:
    """Each injected failure beside the earliest drain decision that preceded it."""
    table = Table("failure at", "node", "mode", "decision before it", title="injected failures")
    for f in failures[-8:]:
        before = [
            a for a in actions
            if a["node"] == f["node"] and a["action"] in ("drain", "failover")
            and a["status"] != "blocked" and f["ts"] - 6 * 3600 <= a["ts"] <= f["ts"]
        ]  # fmt: skip
        if before:
            lead = (f["ts"] - min(a["ts"] for a in before)) / 60
            verdict = f"[green]{before[0]['action']} {lead:.0f} min before[/]"
        elif f["mode"] == "sudden_crash":
            verdict = "[dim]no precursor to see[/]"
        else:
            verdict = "[red]missed[/]"
        stamp = time.strftime("%d %H:%M", time.gmtime(f["ts"]))
        table.add_row(stamp, f["node"], f["mode"], verdict)
    return table


def _actions_view(actions: list[dict[str, Any]]) -> Table:
    table = Table("sim time", "node", "action", "status", "reason", title="decisions (audit log)")
    for a in actions[:8]:
        stamp = time.strftime("%d %H:%M", time.gmtime(a["ts"]))
        table.add_row(stamp, a["node"], a["action"], a["status"], a["reason"][:90])
    return table


def run_demo(
    *,
    settings: Settings,
    nodes: int,
    speed: float,
    seed: int,
    duration_s: float,
    console: Console,
) -> None:
    """Serve, stream the simulated fleet, and redraw the live view until done or Ctrl-C."""
    from predictor.cli import risk_table
    from predictor.simulate import FleetSpec, stream_to_api

    _reset_store(settings)
    api_key = _demo_key(settings)
    server, server_thread = _start_server(settings)
    base_url = f"http://{settings.host}:{settings.port}"
    start = time.time() - 2 * DAY_S
    spec = FleetSpec(
        nodes=nodes, step_s=60.0, duration_s=2 * DAY_S, start_ts=start - start % 60, seed=seed
    )
    stop = threading.Event()
    clock = {"ts": spec.start_ts}
    failures: list[dict[str, Any]] = []

    def on_step(ts: float, samples: pd.DataFrame, events: pd.DataFrame) -> None:
        clock["ts"] = ts
        failures.extend(events[events["kind"] == "failure"].to_dict("records"))

    streamer = threading.Thread(
        target=stream_to_api,
        kwargs={
            "spec": spec,
            "base_url": base_url,
            "speed": speed,
            "on_step": on_step,
            "stop": stop,
            "api_key": api_key,
        },
        daemon=True,
    )
    streamer.start()
    console.print(
        f"predictor on {base_url} (dry-run: {settings.dry_run}); streaming {nodes} simulated"
        f" nodes at {speed:.0f}x. Ctrl-C stops."
    )
    began = time.monotonic()
    try:
        with (
            httpx.Client(
                base_url=base_url, timeout=10, headers={"Authorization": f"Bearer {api_key}"}
            ) as client,
            Live(console=console, refresh_per_second=2) as live,
        ):
            while streamer.is_alive() and not (
                duration_s and time.monotonic() - began > duration_s
            ):
                risk = client.get("/v1/risk", params={"top": 10}).json()
                actions = client.get("/v1/actions", params={"limit": 500}).json()
                sim_time = time.strftime("%Y-%m-%d %H:%M", time.gmtime(clock["ts"]))
                live.update(
                    Group(
                        Panel(f"simulated time {sim_time} UTC", expand=False),
                        risk_table(risk),
                        _actions_view(actions),
                        _failures_view(failures, actions),
                    )
                )
                time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        stop.set()
        streamer.join(timeout=10)
        server.should_exit = True
        server_thread.join(timeout=30)
    console.print("stopped cleanly: store flushed, online state checkpointed")
