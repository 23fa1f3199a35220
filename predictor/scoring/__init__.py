"""The per-node scoring engine (see :mod:`predictor.scoring.engine` for the fusion)."""

from predictor.scoring.engine import ScoringEngine, StepResult

__all__ = ["ScoringEngine", "StepResult"]
