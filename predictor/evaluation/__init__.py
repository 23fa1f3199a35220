"""Evaluation: the NAB runner and scorer (:mod:`predictor.evaluation.nab`) and fleet metrics."""
