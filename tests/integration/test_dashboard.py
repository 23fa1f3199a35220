"""The dashboard in a real browser: Debian's chromium, driven by Playwright, on a live server.

A small simulated fleet is streamed over HTTP into a real uvicorn server and scored; one
node is drained through the policy (dry-run). The test then uses the page as an operator
would: gives the API key, reads the fleet table, opens a node, presses Undrain.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import uvicorn

from predictor.api import create_app
from predictor.config import Settings
from predictor.policy import DRAINED
from predictor.service import Runtime
from predictor.simulate import FleetSpec, stream_to_api

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
KEY = "dev"  # the documented dev key (env == "dev")
REPORTS = Path(__file__).resolve().parents[2] / "reports"
STEP = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Runtime, str]]:
    """A live server on a scored fleet of 6 nodes, one of them drained (dry-run)."""
    root = tmp_path_factory.mktemp("dashboard")
    settings = Settings(
        db=root / "predictor.db", models_dir=root / "models", port=free_port(),
        eval_step_s=STEP, auto_undrain=False, online_detectors=["ewma_z"],
    )  # fmt: skip
    runtime = Runtime.build(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, runtime=runtime),
            host="127.0.0.1",
            port=settings.port,
            log_level="warning",
        )  # fmt: skip
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, "the server to start")
    base_url = f"http://127.0.0.1:{settings.port}"
    spec = FleetSpec(
        nodes=6, pools=2, duration_s=4 * 3600, step_s=STEP, seed=5,
        failure_rate_per_node_day=2.0, modes=("disk_fill", "memory_leak"),
    )  # fmt: skip
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as client:
        stream_to_api(spec, base_url=base_url, client=client)
        wait_for(
            lambda: (
                runtime.scorer.lag_rows() == 0
                and len(client.get(f"{base_url}/v1/risk", params={"top": 100}).json()) == spec.nodes
            ),
            "the fleet to be scored",
        )
    try:
        yield base_url, runtime, drain_one(runtime)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def drain_one(runtime: Runtime) -> str:
    """Drain the riskiest node through the policy (dry-run): a sustained high-risk episode."""
    drained = [n for n, s in runtime.store.node_states().items() if s["state"] == DRAINED]
    if drained:  # the policy may already have drained one on the fleet's own risk
        return drained[0]
    with runtime.scorer.lock:
        latest = runtime.scorer.latest
        node = max(latest, key=lambda n: latest[n]["risk"])
        ts = runtime.scorer.engine.fleet_now()
        s = runtime.settings
        why = latest[node]["why"]
        episode = pd.DataFrame(
            {"node": [node, node], "ts": [ts - s.min_duration_s, ts], "risk": [0.95, 0.95],
             "why": [why, why]}
        )  # fmt: skip
        actions = runtime.scorer.policy.decide(
            episode,
            node_last_ts=runtime.scorer.engine.node_last_ts(),
            node_risk={n: (0.95 if n == node else 0.0) for n in latest},
        )
    assert [a["action"] for a in actions] in (["drain"], ["failover"]), actions
    assert runtime.store.node_states()[node]["state"] == DRAINED
    return node


@pytest.fixture
def page() -> Iterator[Any]:
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


def test_fleet_node_page_and_undrain(served: tuple[str, Runtime, str], page: Any) -> None:
    base_url, runtime, drained = served
    api = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    sent_keys: list[str | None] = []
    page.on(
        "request",
        lambda r: sent_keys.append(r.headers.get("authorization")) if "/v1/" in r.url else None,
    )

    # First visit: the page asks for a key before it calls the API.
    page.goto(base_url + "/")
    page.wait_for_selector("#key-dialog[open]")
    assert sent_keys == []
    # A key the API refuses brings the question back, saying so.
    page.fill("#key-input", "not-a-key")
    page.click("#key-save")
    page.wait_for_selector("#key-dialog[open] #key-error:not([hidden])")
    assert sent_keys and set(sent_keys) == {"Bearer not-a-key"}
    sent_keys.clear()
    page.fill("#key-input", KEY)
    page.click("#key-save")
    page.wait_for_selector("body[data-loaded=fleet]")

    # The fleet table: every node, riskiest first, each with a drawn sparkline.
    expected = api.get("/v1/risk", params={"top": 100}).json()
    rows = page.locator("#fleet-table tbody tr")
    assert rows.count() == len(expected) == 6
    shown = rows.evaluate_all("rows => rows.map(r => r.dataset.node)")
    risks = page.locator("#fleet-table td.risk").evaluate_all(
        "cells => cells.map(c => Number(c.dataset.risk))"
    )
    assert shown == [r["node"] for r in expected]
    assert risks == sorted(risks, reverse=True) and len(set(risks)) > 1
    points = page.locator("#fleet-table svg.spark polyline").evaluate_all(
        "lines => lines.map(l => l.getAttribute('points').trim().split(/\\s+/).length)"
    )
    assert len(points) == 6 and min(points) >= 2
    assert page.locator(f"#fleet-table tr[data-node='{drained}'] .badge").inner_text() == DRAINED
    assert page.locator("#fleet-actions .undrain-btn").count() == 1
    REPORTS.mkdir(exist_ok=True)
    page.screenshot(path=str(REPORTS / "dashboard.png"), full_page=True)

    # The drained node's page: its risk over time, the why, its state and action log.
    page.click(f"#fleet-table tr[data-node='{drained}'] a")
    page.wait_for_selector("body[data-loaded=node]")
    page.wait_for_function(
        "node => document.getElementById('node-name').textContent === node", arg=drained
    )
    assert page.locator("#node-state").inner_text() == DRAINED
    why_api = [w["metric"] for w in api.get(f"/v1/nodes/{drained}/risk").json()["why"]]
    why_page = page.locator("#node-why tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.metric)"
    )
    assert why_page == why_api and len(why_page) >= 1
    assert page.locator("#node-chart polyline.risk").count() == 1
    assert page.locator("#node-actions tr.action").first.get_attribute("data-action") in (
        "drain",
        "failover",
    )
    page.screenshot(path=str(REPORTS / "dashboard-node.png"), full_page=True)

    # Undrain, confirming the browser's prompt: the service undrains and audits it as manual.
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#undrain")
    page.wait_for_function("document.getElementById('node-state').textContent === 'active'")
    assert page.locator("#node-undrain-box").is_hidden()
    assert runtime.store.node_states().get(drained) is None
    assert api.get(f"/v1/nodes/{drained}/risk").json()["state"] == "active"
    latest = api.get("/v1/actions", params={"node": drained, "limit": 1}).json()[0]
    assert latest["action"] == "undrain" and latest["reason"].startswith("manual:")
    assert page.locator("#node-actions tr.action").first.get_attribute("data-action") == "undrain"

    # Every data call carried the key.
    assert sent_keys and set(sent_keys) == {f"Bearer {KEY}"}
    api.close()
