"""The one small interface every actuator implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

ACTIONS = ("weight", "drain", "failover", "undrain", "ready_standby")


@dataclass(frozen=True)
class ActionRequest:
    """What the policy asks an actuator to do to one node."""

    action: str  # one of ACTIONS
    node: str
    node_meta: dict[str, Any]
    reason: str
    risk: float
    ts: float  # event time of the decision
    action_id: int


class ActuatorError(RuntimeError):
    """The actuator could not carry out the action (retryable unless ``final``)."""

    def __init__(self, message: str, *, final: bool = False):
        super().__init__(message)
        self.final = final


class Actuator(Protocol):
    """Carries out an action through the operator's tooling; raises ActuatorError."""

    name: str

    def apply(self, request: ActionRequest) -> str:
        """Do it; return a short detail for the audit log."""
        ...
