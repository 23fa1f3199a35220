"""Online detectors behind one contract (see :class:`OnlineDetector`).

Every detector scores many series at once, returns scores in ``[0, 1]`` with
**higher = more anomalous**, scores a sample before learning it and never sees labels.
``make_detector(name)`` builds one from the names used in settings.
"""

from __future__ import annotations

from collections.abc import Callable

from predictor.detectors.base import OnlineDetector
from predictor.detectors.ewma_z import EwmaZScore
from predictor.detectors.river_hst import RiverHalfSpaceTrees

REGISTRY: dict[str, Callable[[], OnlineDetector]] = {
    "ewma_z": EwmaZScore,
    "river_hst": RiverHalfSpaceTrees,
}


def make_detector(name: str) -> OnlineDetector:
    try:
        return REGISTRY[name]()
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; known: {sorted(REGISTRY)}") from None


__all__ = ["REGISTRY", "EwmaZScore", "OnlineDetector", "RiverHalfSpaceTrees", "make_detector"]
