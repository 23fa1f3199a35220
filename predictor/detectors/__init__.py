"""Online detectors behind one contract (see :class:`OnlineDetector`).

Every detector scores many series at once, returns scores in ``[0, 1]`` with
**higher = more anomalous**, scores a sample before learning it and never sees labels.
``make_detector(name)`` builds one from the names used in settings.
"""

from __future__ import annotations

from collections.abc import Callable

from predictor.detectors.base import OnlineDetector
from predictor.detectors.breakout import Breakout
from predictor.detectors.context_novelty import ContextNovelty
from predictor.detectors.ensemble import Ensemble
from predictor.detectors.ew_novelty import EwNovelty
from predictor.detectors.ewma_z import EwmaZScore
from predictor.detectors.range_break import RangeBreak
from predictor.detectors.river_hst import RiverHalfSpaceTrees
from predictor.detectors.seasonal import SeasonalNovelty
from predictor.detectors.sustained import Sustained

REGISTRY: dict[str, Callable[[], OnlineDetector]] = {
    "ewma_z": EwmaZScore,
    "river_hst": RiverHalfSpaceTrees,
    "ensemble": Ensemble,
    "ew_novelty": EwNovelty,
    "context_novelty": ContextNovelty,
    "seasonal_novelty": SeasonalNovelty,
    "range_break": RangeBreak,
    "sustained": Sustained,
    "breakout": Breakout,
}


def make_detector(name: str) -> OnlineDetector:
    try:
        return REGISTRY[name]()
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; known: {sorted(REGISTRY)}") from None


__all__ = [
    "REGISTRY",
    "Breakout",
    "ContextNovelty",
    "Ensemble",
    "EwNovelty",
    "EwmaZScore",
    "OnlineDetector",
    "RangeBreak",
    "RiverHalfSpaceTrees",
    "SeasonalNovelty",
    "Sustained",
    "make_detector",
]
