"""Drain, fail over and re-weight nodes through the HAProxy runtime API.

Each action is one ``set server <backend>/<server> ...`` command on the admin socket,
then ``show servers state <backend>`` reads the server back: an action counts as done
only once HAProxy reports the state it was asked for. The backend and server come from
the node registry (``lb_backend``, ``lb_server``).

HAProxy needs an admin-level socket, e.g. ``stats socket /run/haproxy/admin.sock mode 600
level admin`` (or ``stats socket ipv4@127.0.0.1:9999 level admin``).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Literal

from predictor.actuators.base import ActionRequest, ActuatorError

# srv_admin_state bits (HAProxy's SRV_ADMF_*). CMAINT only records that the server is
# `disabled` in the configuration; `state ready` clears FMAINT and the server runs with
# CMAINT still set, so it does not count against "ready".
FMAINT, IMAINT, CMAINT, FDRAIN, IDRAIN, RMAINT, HMAINT = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40
ADMIN_FLAGS = {
    FMAINT: "maint", IMAINT: "inherited maint", CMAINT: "disabled in config", FDRAIN: "drain",
    IDRAIN: "inherited drain", RMAINT: "DNS resolution maint", HMAINT: "hostname maint",
}  # fmt: skip
OP_STATES = {0: "stopped", 1: "starting", 2: "running", 3: "stopping"}
# Names go into a text protocol where ';' separates commands and spaces split words.
SAFE_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


@dataclass(frozen=True)
class ServerState:
    """One server's line of ``show servers state``."""

    op_state: int
    admin_state: int
    weight: int  # srv_uweight: the weight in force
    initial_weight: int  # srv_iweight: the configured weight

    def describe(self) -> str:
        flags = [name for bit, name in ADMIN_FLAGS.items() if self.admin_state & bit]
        return (
            f"admin {'+'.join(flags) or 'ready'}, {OP_STATES.get(self.op_state, self.op_state)},"
            f" weight {self.weight}/{self.initial_weight}"
        )


def is_in_state(server: ServerState, state: str) -> bool:
    """Whether ``server`` is in the runtime-API ``state`` (ready, drain or maint)."""
    admin = server.admin_state & ~CMAINT
    if state == "maint":
        return bool(admin & FMAINT)
    if state == "drain":
        return bool(admin & FDRAIN) and not admin & FMAINT
    return admin == 0


def parse_servers_state(text: str) -> dict[str, ServerState]:
    """Parse ``show servers state`` output (format version 1) into servers by name."""
    columns: list[str] = []
    servers: dict[str, ServerState] = {}
    for line in text.splitlines():
        if line.startswith("# "):
            columns = line[2:].split()
            continue
        fields = line.split()
        if not columns or len(fields) != len(columns):
            continue  # the version line, a blank line
        row = dict(zip(columns, fields, strict=True))
        servers[row["srv_name"]] = ServerState(
            op_state=int(row["srv_op_state"]),
            admin_state=int(row["srv_admin_state"]),
            weight=int(row["srv_uweight"]),
            initial_weight=int(row["srv_iweight"]),
        )
    return servers


def weight_for_risk(risk: float, initial_weight: int) -> int:
    """The weight that sheds load in proportion to risk, never above the configured one.

    Scaling the configured weight (rather than setting ``100 * (1 - risk)`` outright)
    keeps a risky server from ever getting *more* traffic than its peers, whatever
    weights the operator configured; it never goes to 0, which would be a drain.

    >>> weight_for_risk(0.3, 100), weight_for_risk(0.999, 100), weight_for_risk(0.5, 1)
    (70, 1, 1)
    """
    share = 1.0 - min(1.0, max(0.0, risk))
    return min(initial_weight, max(1, round(initial_weight * share)))


class HAProxyActuator:
    """Carries out actions as HAProxy runtime API commands.

    Parameters
    ----------
    address
        The admin socket: a unix socket path, or ``host:port`` for a TCP socket.
    timeout_s
        Connect and read timeout of each command.
    failover_state
        Server state for the node's side of a failover (``drain`` lets sessions finish;
        ``maint`` cuts the server off at once). A plain drain is always ``drain``.
    """

    name = "haproxy"

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float = 5.0,
        failover_state: Literal["drain", "maint"] = "drain",
    ):
        self.address = address
        self.timeout_s = timeout_s
        self.failover_state = failover_state

    # -- the runtime API -------------------------------------------------------------
    def _connect(self) -> socket.socket:
        if "/" in self.address or ":" not in self.address:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout_s)
            try:
                sock.connect(self.address)
            except OSError:
                sock.close()
                raise
            return sock
        host, port = self.address.rsplit(":", 1)
        return socket.create_connection((host.strip("[]"), int(port)), timeout=self.timeout_s)

    def command(self, line: str) -> str:
        """Send one command; return HAProxy's whole answer (it closes after answering)."""
        try:
            with self._connect() as sock:
                sock.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError as exc:  # refused, missing socket, timeout: HAProxy may be reloading
            raise ActuatorError(f"haproxy runtime API at {self.address}: {exc}") from exc
        return b"".join(chunks).decode(errors="replace")

    def server_state(self, backend: str, server: str) -> ServerState:
        answer = self.command(f"show servers state {backend}")
        if not answer.startswith("1\n"):
            raise ActuatorError(f"haproxy: backend {backend}: {answer.strip()}", final=True)
        servers = parse_servers_state(answer)
        if server not in servers:
            raise ActuatorError(f"haproxy: no server {server} in backend {backend}", final=True)
        return servers[server]

    def _set(self, backend: str, server: str, setting: str) -> None:
        answer = self.command(f"set server {backend}/{server} {setting}").strip()
        if answer:  # success is an empty answer; anything else is HAProxy refusing
            raise ActuatorError(
                f"haproxy refused 'set server {backend}/{server} {setting}': {answer}", final=True
            )

    # -- actions ---------------------------------------------------------------------
    def apply(self, request: ActionRequest) -> str:
        backend, server = self._target(request)
        if request.action == "weight":
            return self._weight(backend, server, request.risk)
        states = {
            "drain": "drain", "failover": self.failover_state, "undrain": "ready",
            "ready_standby": "ready",
        }  # fmt: skip
        if request.action not in states:
            raise ActuatorError(f"haproxy: unknown action {request.action!r}", final=True)
        state = states[request.action]
        if request.action == "drain" and request.node_meta.get("standby"):
            # The policy fails a node over as ready_standby, then drain of the node.
            state = self.failover_state
        self._set(backend, server, f"state {state}")
        after = self.server_state(backend, server)
        if not is_in_state(after, state):
            raise ActuatorError(
                f"haproxy: {backend}/{server} asked to {state} but reads back {after.describe()}"
            )
        if request.action == "undrain" and after.weight < after.initial_weight:
            # Back in service means the full configured weight, not a risk-lowered one.
            after = self._weight_to(backend, server, after.initial_weight)
        return f"haproxy {backend}/{server} {state} ({after.describe()})"

    def _weight(self, backend: str, server: str, risk: float) -> str:
        before = self.server_state(backend, server)
        after = self._weight_to(backend, server, weight_for_risk(risk, before.initial_weight))
        return f"haproxy {backend}/{server} weight {before.weight} -> {after.weight}"

    def _weight_to(self, backend: str, server: str, weight: int) -> ServerState:
        self._set(backend, server, f"weight {weight}")
        after = self.server_state(backend, server)
        if after.weight != weight:
            raise ActuatorError(
                f"haproxy: {backend}/{server} weight {weight} reads back {after.weight}"
            )
        return after

    def _target(self, request: ActionRequest) -> tuple[str, str]:
        meta = request.node_meta
        if request.action == "ready_standby" and meta.get("standby") == request.node:
            # The policy falls back to the failing node's entry for an unregistered standby.
            raise ActuatorError(
                f"haproxy: standby {request.node} is not in the node registry", final=True
            )
        backend, server = meta.get("lb_backend"), meta.get("lb_server")
        if not backend or not server:
            raise ActuatorError(
                f"haproxy: node {request.node} has no lb_backend/lb_server in the node registry"
                f" (set them with PUT /v1/nodes/{request.node})",
                final=True,
            )
        for name in (backend, server):
            if not SAFE_NAME.match(name):
                raise ActuatorError(f"haproxy: unsafe backend/server name {name!r}", final=True)
        return backend, server
