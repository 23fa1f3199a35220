"""The default actuator: writes the action to the log and nothing else."""

from __future__ import annotations

import logging

from predictor.actuators.base import ActionRequest

logger = logging.getLogger("predictor.actions")


class LogActuator:
    name = "log"

    def apply(self, request: ActionRequest) -> str:
        logger.warning(
            "%s %s (risk %.2f): %s", request.action, request.node, request.risk, request.reason
        )
        return "logged"
