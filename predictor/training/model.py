"""The batch model: IsolationForest over node feature vectors, plus a failure classifier."""

from __future__ import annotations

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline

from predictor.features.node import feature_names

MIN_POSITIVES = 10


class BatchModel:
    """Scores node feature vectors (see :mod:`predictor.features.node`).

    - ``anomaly_score``: IsolationForest, mapped to ``[0, 1]`` with **higher = more
      abnormal** (sklearn's ``score_samples`` is the opposite; this is the one place we
      flip it): 0 up to the training median, 1 from the training 99.9th percentile on.
    - ``failure_probability``: calibrated P(failure within ``horizon_s``), present only
      when training saw enough failures (``None`` otherwise).

    Parameters follow scikit-learn: ``__init__`` stores, ``fit`` learns into ``*_``.
    """

    def __init__(self, metrics: list[str], horizon_s: float = 1800.0, seed: int = 0, n_jobs: int = -1):
        self.metrics = metrics
        self.horizon_s = horizon_s
        self.seed = seed
        self.n_jobs = n_jobs

    @property
    def feature_names(self) -> list[str]:
        return feature_names(self.metrics)

    def fit(
        self, X: np.ndarray, y: np.ndarray | None = None, sample_weight: np.ndarray | None = None
    ) -> BatchModel:
        self.isolation_: Pipeline = make_pipeline(
            SimpleImputer(strategy="median", keep_empty_features=True),
            IsolationForest(n_estimators=100, random_state=self.seed, n_jobs=self.n_jobs),
        ).fit(X)
        raw = -self.isolation_.score_samples(X)
        self.raw_median_ = float(np.median(raw))
        self.raw_high_ = float(np.quantile(raw, 0.999))
        self.classifier_: CalibratedClassifierCV | None = None
        if y is not None and int(np.sum(y)) >= MIN_POSITIVES and int(np.sum(1 - y)) >= MIN_POSITIVES:
            base = HistGradientBoostingClassifier(
                max_iter=200, learning_rate=0.1, l2_regularization=1.0, random_state=self.seed
            )
            self.classifier_ = CalibratedClassifierCV(base, method="isotonic", cv=3).fit(
                X, y, sample_weight=sample_weight
            )
        return self

    def anomaly_score(self, X: np.ndarray) -> np.ndarray:
        raw = -self.isolation_.score_samples(X)
        span = max(self.raw_high_ - self.raw_median_, 1e-9)
        return np.clip((raw - self.raw_median_) / span, 0.0, 1.0)

    def failure_probability(self, X: np.ndarray) -> np.ndarray | None:
        if self.classifier_ is None:
            return None
        return self.classifier_.predict_proba(X)[:, 1]
