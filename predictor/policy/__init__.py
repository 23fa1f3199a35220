"""The action policy: decides from risk; actuators act (see :mod:`predictor.policy.policy`)."""

from predictor.policy.policy import DRAINED, NodeTrack, Policy

__all__ = ["DRAINED", "NodeTrack", "Policy"]
