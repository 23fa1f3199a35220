"""Fleet simulator: realistic, labelled node metrics with injected failure modes.

:func:`simulate` builds a whole fleet from a :class:`FleetSpec`; :func:`iter_steps` yields the
very same fleet step by step for live streaming, and :func:`stream_to_api` sends it to a
running service. A spec always gives the same fleet, so train and test on different seeds.

Failure modes with a precursor (20 min to 3 h): ``memory_leak``, ``disk_fill``,
``error_rate``, ``latency_degradation``, ``thermal``, ``patchy_data``; without one:
``sudden_crash``. A failed node is silent for 10-30 min, then recovers at its baseline.
With ``traps=True`` healthy nodes do their best to look like failing ones.
"""

from predictor.simulate.fleet import (
    CANONICAL_METRICS,
    FAILURE_MODES,
    PRECURSOR_METRIC,
    PRECURSOR_MODES,
    PROMETHEUS_NAMES,
    FleetSpec,
    SimulatedFleet,
    iter_steps,
    node_registry,
    simulate,
)
from predictor.simulate.io import read_dataset, write_dataset
from predictor.simulate.stream import StreamStats, stream_to_api

__all__ = [
    "CANONICAL_METRICS",
    "FAILURE_MODES",
    "PRECURSOR_METRIC",
    "PRECURSOR_MODES",
    "PROMETHEUS_NAMES",
    "FleetSpec",
    "SimulatedFleet",
    "StreamStats",
    "iter_steps",
    "node_registry",
    "read_dataset",
    "simulate",
    "stream_to_api",
    "write_dataset",
]
