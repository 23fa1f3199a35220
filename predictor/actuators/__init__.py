"""Actuators: carry out the policy's actions through the operator's tooling.

Each implements :class:`Actuator` (``apply(request) -> detail``, raising
:class:`ActuatorError`). ``make_actuator(settings)`` builds the configured one.
"""

from __future__ import annotations

from predictor.actuators.base import ActionRequest, Actuator, ActuatorError
from predictor.actuators.haproxy import HAProxyActuator
from predictor.actuators.log import LogActuator
from predictor.actuators.webhook import WebhookActuator, alertmanager_payload
from predictor.config import Settings


def make_actuator(settings: Settings) -> Actuator:
    if settings.actuator == "webhook":
        if not settings.webhook_url:
            raise ValueError("actuator=webhook needs PREDICTOR_WEBHOOK_URL")
        return WebhookActuator(settings.webhook_url, timeout_s=settings.actuator_timeout_s)
    if settings.actuator == "haproxy":
        if not settings.haproxy_socket:
            raise ValueError("actuator=haproxy needs PREDICTOR_HAPROXY_SOCKET")
        return HAProxyActuator(
            settings.haproxy_socket,
            timeout_s=settings.actuator_timeout_s,
            failover_state=settings.haproxy_failover_state,
        )
    if settings.actuator == "kubernetes":
        # Imported here: the kubernetes client takes seconds to import, and only this needs it.
        from predictor.actuators.kubernetes import KubernetesActuator, api_client_from

        return KubernetesActuator(
            api_client_from(api_url=settings.k8s_api_url, kubeconfig=settings.k8s_kubeconfig),
            timeout_s=settings.actuator_timeout_s,
            evict_deadline_s=settings.k8s_evict_deadline_s,
            evict_backoff_s=settings.k8s_evict_backoff_s,
        )
    return LogActuator()


__all__ = [
    "ActionRequest",
    "Actuator",
    "ActuatorError",
    "HAProxyActuator",
    "LogActuator",
    "WebhookActuator",
    "alertmanager_payload",
    "make_actuator",
]
