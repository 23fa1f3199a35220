"""river's HalfSpaceTrees, one model per series, behind our contract."""

from __future__ import annotations

import numpy as np
from river import anomaly, compose, preprocessing

from predictor.detectors.base import OnlineDetector


class RiverHalfSpaceTrees(OnlineDetector):
    """river ``HalfSpaceTrees`` with a ``MinMaxScaler`` in front, one pipeline per series.

    A Python loop per sample: fine for small fleets and as a reference, not for the hot
    path of a large fleet (see ``benchmarks/``).
    """

    layout = ("n_trees", "height", "window_size", "seed")  # each model is built with them

    def __init__(self, n_trees: int = 10, height: int = 8, window_size: int = 100, seed: int = 0):
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.seed = seed
        self.models_: dict[int, compose.Pipeline] = {}

    def _model(self, key: int) -> compose.Pipeline:
        model = self.models_.get(key)
        if model is None:
            model = preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(
                n_trees=self.n_trees,
                height=self.height,
                window_size=self.window_size,
                seed=self.seed,
            )
            self.models_[key] = model
        return model

    def score_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> np.ndarray:
        out = np.zeros(len(keys))
        for i, (key, value) in enumerate(zip(keys.tolist(), values.tolist(), strict=True)):
            model = self.models_.get(key)
            # An unseen series has no baseline yet: river would call everything normal too.
            out[i] = 0.0 if model is None else model.score_one({"x": value})
        return np.clip(out, 0.0, 1.0)

    def learn_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> None:
        for key, value in zip(keys.tolist(), values.tolist(), strict=True):
            self._model(key).learn_one({"x": value})
