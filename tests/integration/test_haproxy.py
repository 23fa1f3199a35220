"""The HAProxy actuator against a real HAProxy (Debian's package) and real backends."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from predictor.actuators import ActionRequest, ActuatorError, HAProxyActuator, make_actuator
from predictor.actuators.haproxy import parse_servers_state, weight_for_risk
from predictor.config import Settings
from predictor.policy import Policy
from predictor.store import SQLiteStore
from tests.server_process import serving, stop_process

pytestmark = pytest.mark.integration
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
STARTUP_DEADLINE_S = 30.0  # generous: the machine is shared
SERVERS = ("web-1", "web-2", "web-3")
STANDBY = "web-9"  # a cold spare: `disabled` in the configuration until readied

CONFIG = """
global
    stats socket {sock} mode 600 level admin
    stats socket ipv4@127.0.0.1:{admin_port} level admin
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend fe
    bind 127.0.0.1:{port}
    default_backend web
backend web
    balance roundrobin
{servers}
"""


@dataclass
class HAProxy:
    socket: str  # the unix admin socket
    tcp_socket: str  # the same API over TCP, host:port
    url: str  # the frontend

    def state(self, server: str) -> dict[str, int]:
        """The server's row of ``show servers state web``, as HAProxy reports it."""
        answer = HAProxyActuator(self.socket).command("show servers state web")
        row = parse_servers_state(answer)[server]
        return {"admin": row.admin_state, "op": row.op_state, "weight": row.weight}

    def served_by(self, requests: int) -> set[str]:
        """Which backends answered ``requests`` fresh requests through the frontend."""
        # A new connection per request, so each one is balanced afresh.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=10, limits=limits) as client:
            return {client.get(self.url).text for _ in range(requests)}


def _backend(name: str) -> type[BaseHTTPRequestHandler]:
    """A load-balanced server that answers with its own name."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            body = name.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def haproxy(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[HAProxy]:
    backends = contextlib.ExitStack()
    urls = {name: backends.enter_context(serving(_backend(name))) for name in (*SERVERS, STANDBY)}
    lines = [
        f"    server {name} {url.removeprefix('http://')} weight 100"
        + (" disabled" if name == STANDBY else "")
        for name, url in urls.items()
    ]
    sock, admin_port, port = tmp_path / "admin.sock", free_port(), free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        CONFIG.format(sock=sock, admin_port=admin_port, port=port, servers="\n".join(lines))
    )
    log = tmp_path / "haproxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(HAPROXY), "-f", str(cfg), "-db"], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while True:
            try:
                HAProxyActuator(str(sock), timeout_s=2).server_state("web", "web-1")
                HAProxyActuator(f"127.0.0.1:{admin_port}", timeout_s=2).command("show info")
                break
            except ActuatorError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"haproxy did not start:\n{log.read_text()}") from None
                time.sleep(0.1)
        yield HAProxy(str(sock), f"127.0.0.1:{admin_port}", f"http://127.0.0.1:{port}/")
    finally:
        stop_process(proc, timeout_s=10)
        backends.close()


def frame(node: str, ts: float, risk: float) -> pd.DataFrame:
    why = [[{"metric": "memory", "score": risk}]]
    return pd.DataFrame({"node": [node], "ts": [ts], "risk": [risk], "why": why})


def request(action: str, node: str = "web-1", risk: float = 0.9, **meta: Any) -> ActionRequest:
    return ActionRequest(
        action=action, node=node, node_meta={"pool": "web", **meta}, reason="test", risk=risk,
        ts=0.0, action_id=1,
    )  # fmt: skip


FDRAIN, FMAINT = 0x08, 0x01
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="no haproxy (apt-get install haproxy)")


@needs_haproxy
def test_policy_drains_a_risky_node_and_the_override_brings_it_back(
    haproxy: HAProxy, tmp_path: Path
) -> None:
    settings = Settings(
        db=tmp_path / "p.db", dry_run=False, min_duration_s=0, cooldown_s=0, auto_undrain=False,
        budget_max_nodes=1, budget_max_fraction=1.0, actuator="haproxy",
        haproxy_socket=haproxy.socket,
    )  # fmt: skip
    store = SQLiteStore(settings.db)
    try:
        for name in SERVERS:
            store.upsert_node(name, {"pool": "web", "lb_backend": "web", "lb_server": name})
        policy = Policy(settings=settings, store=store, actuator=make_actuator(settings))
        assert haproxy.served_by(9) == set(SERVERS)
        fresh = dict.fromkeys(SERVERS, 100.0)

        [drain] = policy.decide(
            frame("web-1", 100.0, 0.95), node_last_ts=fresh, node_risk={"web-1": 0.95}
        )
        assert (drain["action"], drain["status"]) == ("drain", "done")
        assert "web/web-1 drain" in drain["detail"]
        assert haproxy.state("web-1")["admin"] == FDRAIN
        assert {haproxy.state(n)["admin"] for n in ("web-2", "web-3")} == {0}
        assert haproxy.served_by(9) == {"web-2", "web-3"}  # no new work for the drained node

        undrain = policy.undrain("web-1", reason="manual: fixed", ts=200.0)
        assert (undrain["action"], undrain["status"]) == ("undrain", "done")
        assert haproxy.state("web-1")["admin"] == 0
        assert haproxy.served_by(9) == set(SERVERS)
        assert store.node_states().get("web-1") is None
    finally:
        store.close()


@needs_haproxy
def test_failover_readies_the_cold_standby_then_takes_the_node_out(
    haproxy: HAProxy, tmp_path: Path
) -> None:
    settings = Settings(
        db=tmp_path / "p.db", dry_run=False, min_duration_s=0, cooldown_s=0,
        budget_max_nodes=1, budget_max_fraction=1.0,
    )  # fmt: skip
    store = SQLiteStore(settings.db)
    try:
        for name in SERVERS:
            store.upsert_node(name, {"pool": "web", "lb_backend": "web", "lb_server": name})
        store.upsert_node(
            "web-1", {"pool": "web", "lb_backend": "web", "lb_server": "web-1", "standby": STANDBY}
        )
        store.upsert_node(STANDBY, {"pool": "spare", "lb_backend": "web", "lb_server": STANDBY})
        assert STANDBY not in haproxy.served_by(8)
        actuator = HAProxyActuator(haproxy.socket, failover_state="maint")
        policy = Policy(settings=settings, store=store, actuator=actuator)
        fresh = dict.fromkeys(SERVERS, 100.0)

        [failover] = policy.decide(
            frame("web-1", 100.0, 0.95), node_last_ts=fresh, node_risk={"web-1": 0.95}
        )
        assert (failover["action"], failover["status"]) == ("failover", "done")
        assert "web/web-9 ready" in failover["detail"] and "web/web-1 maint" in failover["detail"]
        assert haproxy.state(STANDBY)["op"] == 2  # running, though still `disabled` in config
        assert haproxy.state("web-1")["admin"] & FMAINT
        assert haproxy.served_by(9) == {"web-2", "web-3", STANDBY}
    finally:
        store.close()


@needs_haproxy
def test_weight_sheds_load_and_undrain_restores_it_over_tcp(haproxy: HAProxy) -> None:
    actuator = HAProxyActuator(haproxy.tcp_socket)
    meta = {"lb_backend": "web", "lb_server": "web-2"}
    detail = actuator.apply(request("weight", "web-2", risk=0.3, **meta))
    assert detail == "haproxy web/web-2 weight 100 -> 70"
    assert haproxy.state("web-2")["weight"] == 70
    actuator.apply(request("weight", "web-2", risk=1.0, **meta))
    assert haproxy.state("web-2")["weight"] == 1  # never 0: taking it out is a drain
    actuator.apply(request("undrain", "web-2", **meta))
    assert haproxy.state("web-2") == {"admin": 0, "op": 2, "weight": 100}


@needs_haproxy
@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"lb_backend": "web", "lb_server": "web-7"}, "No such server"),
        ({"lb_backend": "api", "lb_server": "web-1"}, "No such backend"),
        ({"lb_backend": "web", "lb_server": "web-1;disable frontend fe"}, "unsafe"),
        ({"lb_backend": "web"}, "no lb_backend/lb_server"),
        ({}, "no lb_backend/lb_server"),
    ],
)
def test_what_haproxy_cannot_do_is_final(
    haproxy: HAProxy, meta: dict[str, str], message: str
) -> None:
    with pytest.raises(ActuatorError, match=message) as info:
        HAProxyActuator(haproxy.socket).apply(request("drain", **meta))
    assert info.value.final is True
    assert {haproxy.state(n)["admin"] for n in SERVERS} == {0}
    assert haproxy.served_by(3) == set(SERVERS)  # the injected command did not run either


@needs_haproxy
def test_unregistered_standby_is_not_confused_with_the_node(haproxy: HAProxy) -> None:
    # The policy hands over the failing node's entry when the standby is not registered.
    meta = {"lb_backend": "web", "lb_server": "web-1", "standby": STANDBY}
    with pytest.raises(ActuatorError, match="not in the node registry") as info:
        HAProxyActuator(haproxy.socket).apply(request("ready_standby", STANDBY, **meta))
    assert info.value.final is True


def test_an_unreachable_socket_is_retryable(tmp_path: Path) -> None:
    meta = {"lb_backend": "web", "lb_server": "web-1"}
    with pytest.raises(ActuatorError, match="runtime API") as info:
        HAProxyActuator(str(tmp_path / "missing.sock"), timeout_s=1).apply(request("drain", **meta))
    assert info.value.final is False


def test_parse_servers_state_and_weight_for_risk() -> None:
    text = (
        "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight"
        " srv_iweight\n3 web 1 a 10.0.0.1 2 8 40 100\n3 web 2 b 10.0.0.2 0 5 1 1\n\n"
    )
    servers = parse_servers_state(text)
    assert servers["a"].admin_state == 8 and servers["a"].weight == 40
    assert servers["b"].describe() == "admin maint+disabled in config, stopped, weight 1/1"
    assert [weight_for_risk(r, 100) for r in (0.0, 0.25, 0.999, 1.5, -1)] == [100, 75, 1, 1, 100]
    assert weight_for_risk(0.9, 0) == 0  # a weight-0 server stays where the operator put it


def test_make_actuator_builds_haproxy(tmp_path: Path) -> None:
    actuator = make_actuator(
        Settings(
            actuator="haproxy", haproxy_socket="127.0.0.1:9999", haproxy_failover_state="maint"
        )
    )
    assert isinstance(actuator, HAProxyActuator)
    assert (actuator.address, actuator.failover_state) == ("127.0.0.1:9999", "maint")
    with pytest.raises(ValueError, match="HAPROXY_SOCKET"):
        make_actuator(Settings(actuator="haproxy"))
