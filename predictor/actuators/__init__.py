"""Actuators: carry out the policy's actions through the operator's tooling.

Each implements :class:`Actuator` (``apply(request) -> detail``, raising
:class:`ActuatorError`). ``make_actuator(settings)`` builds the configured one.
"""

from __future__ import annotations

from predictor.actuators.base import ActionRequest, Actuator, ActuatorError
from predictor.actuators.log import LogActuator
from predictor.actuators.webhook import WebhookActuator, alertmanager_payload
from predictor.config import Settings


def make_actuator(settings: Settings) -> Actuator:
    if settings.actuator == "webhook":
        if not settings.webhook_url:
            raise ValueError("actuator=webhook needs PREDICTOR_WEBHOOK_URL")
        return WebhookActuator(settings.webhook_url, timeout_s=settings.actuator_timeout_s)
    return LogActuator()


__all__ = [
    "ActionRequest",
    "Actuator",
    "ActuatorError",
    "LogActuator",
    "WebhookActuator",
    "alertmanager_payload",
    "make_actuator",
]
