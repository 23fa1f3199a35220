"""The batch model: IsolationForest over node feature vectors, plus a failure classifier."""

from __future__ import annotations

from functools import cache

import numpy as np
from joblib import effective_n_jobs
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest
from sklearn.impute import SimpleImputer
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from threadpoolctl import ThreadpoolController

from predictor.features.node import feature_names

MIN_POSITIVES = 10
# Larger inputs are subsampled (see BatchModel.fit); smaller ones are used whole.
ISOLATION_MAX_ROWS = 100_000
CLASSIFIER_MAX_ROWS = 250_000
SCORE_BLOCK_ROWS = 65_536


@cache
def _threadpools() -> ThreadpoolController:
    return ThreadpoolController()


CALIBRATION_FOLDS = 3


def average_path_length(n: np.ndarray) -> np.ndarray:
    """Expected path length of an unsuccessful search in a binary tree of ``n`` points."""
    n = np.asarray(n, dtype=float)
    harmonic = np.log(np.maximum(n - 1, 1)) + np.euler_gamma
    out = 2.0 * harmonic - 2.0 * (n - 1) / np.maximum(n, 1)
    return np.where(n <= 1, 0.0, np.where(n == 2, 1.0, out))


class CompiledForest:
    """A fitted IsolationForest flattened into arrays and walked for all trees at once.

    sklearn scores tree by tree through joblib, ~25 ms per call however few rows; the
    engine scores a handful of nodes per evaluation, so it walks all trees together in
    numpy instead (same numbers: a test holds it equal to ``score_samples``).
    """

    def __init__(self, forest: IsolationForest, fill: np.ndarray):
        features, thresholds, lefts, rights, values, roots = [], [], [], [], [], []
        offset = 0
        for tree, subset in zip(forest.estimators_, forest.estimators_features_, strict=True):
            t = tree.tree_
            leaf = t.children_left < 0
            depth = np.zeros(t.node_count)
            for node in range(t.node_count):  # parents precede children in sklearn trees
                if not leaf[node]:
                    depth[t.children_left[node]] = depth[node] + 1
                    depth[t.children_right[node]] = depth[node] + 1
            features.append(np.where(leaf, -1, np.asarray(subset)[np.maximum(t.feature, 0)]))
            thresholds.append(t.threshold)
            lefts.append(np.where(leaf, -1, t.children_left + offset))
            rights.append(np.where(leaf, -1, t.children_right + offset))
            values.append(depth + average_path_length(t.n_node_samples))
            roots.append(offset)
            offset += t.node_count
        self.feature = np.concatenate(features)
        self.threshold = np.concatenate(thresholds)
        self.left = np.concatenate(lefts)
        self.right = np.concatenate(rights)
        self.value = np.concatenate(values)
        self.roots = np.array(roots)
        self.max_depth = max(int(e.tree_.max_depth) for e in forest.estimators_)
        self.denominator = len(forest.estimators_) * float(
            average_path_length(np.array([forest.max_samples_]))[0]
        )
        self.fill = fill

    def raw_anomaly(self, X: np.ndarray) -> np.ndarray:
        """``-score_samples(X)`` of the original forest: higher = more abnormal."""
        if len(X) > SCORE_BLOCK_ROWS:  # the walk holds (rows x trees) arrays: bound them
            blocks = range(0, len(X), SCORE_BLOCK_ROWS)
            return np.concatenate([self._raw(X[i : i + SCORE_BLOCK_ROWS]) for i in blocks])
        return self._raw(X)

    def _raw(self, X: np.ndarray) -> np.ndarray:
        X = np.where(np.isnan(X), self.fill, X)
        # sklearn trees compare float32 inputs against float64 thresholds.
        X = X.astype(np.float32).astype(np.float64)
        rows = np.arange(len(X))[:, None]
        node = np.broadcast_to(self.roots, (len(X), len(self.roots))).copy()
        for _ in range(self.max_depth):
            feature = self.feature[node]
            leaf = feature < 0
            go_left = X[rows, np.maximum(feature, 0)] <= self.threshold[node]
            node = np.where(leaf, node, np.where(go_left, self.left[node], self.right[node]))
        return 2.0 ** (-self.value[node].sum(axis=1) / self.denominator)


def _sample(rows: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray | None:
    """A uniform sample of ``size`` of ``rows`` in their order; ``None`` if there are no more."""
    if len(rows) <= size:
        return None
    return np.sort(rng.choice(rows, size=size, replace=False))


class BatchModel:
    """Scores node feature vectors (see :mod:`predictor.features.node`).

    - ``anomaly_score``: IsolationForest, mapped to ``[0, 1]`` with **higher = more
      abnormal** (sklearn's ``score_samples`` is the opposite; this is the one place we
      flip it): 0 up to the training median, 1 from the training 99.9th percentile on.
    - ``failure_probability``: calibrated P(failure within ``horizon_s``), present only
      when training saw enough failures (``None`` otherwise).

    Parameters follow scikit-learn: ``__init__`` stores, ``fit`` learns into ``*_``.
    """

    def __init__(
        self,
        metrics: list[str],
        horizon_s: float = 1800.0,
        seed: int = 0,
        n_jobs: int = -1,
        isolation_max_rows: int = ISOLATION_MAX_ROWS,
        classifier_max_rows: int = CLASSIFIER_MAX_ROWS,
    ):
        self.metrics = metrics
        self.horizon_s = horizon_s
        self.seed = seed
        self.n_jobs = n_jobs
        self.isolation_max_rows = isolation_max_rows
        self.classifier_max_rows = classifier_max_rows

    @property
    def feature_names(self) -> list[str]:
        return feature_names(self.metrics)

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> BatchModel:
        """Fit on rows in time order (the classifier is calibrated out of fold).

        Uses ``n_jobs`` cores: IsolationForest's trees and HistGradientBoosting's OpenMP
        threads (``-1``: all of them). A large history is subsampled where that costs no
        quality (inputs within the limits are used whole):

        - IsolationForest grows each tree on 256 rows drawn at random, so a uniform sample
          of ``isolation_max_rows`` is as good a pool; the imputer's medians and the
          score's scale come from the same sample.
        - The classifier fits on every failure row and a uniform sample of the other rows
          (``classifier_max_rows`` in all, of which at least half are other rows); its
          calibration sees the same rows, out of fold, the sampled ones weighted up by
          the inverse of their sampling rate, so the probabilities keep the history's
          failure rate.
        """
        rng = np.random.default_rng(self.seed)
        pool = _sample(np.arange(len(X)), self.isolation_max_rows, rng)
        X_pool = X if pool is None else X[pool]
        self.isolation_: Pipeline = make_pipeline(
            SimpleImputer(strategy="median", keep_empty_features=True),
            IsolationForest(n_estimators=50, random_state=self.seed, n_jobs=self.n_jobs),
        ).fit(X_pool)
        imputer, forest = self.isolation_[0], self.isolation_[-1]
        self.forest_ = CompiledForest(forest, fill=imputer.statistics_)
        raw = self.forest_.raw_anomaly(X_pool)
        self.raw_median_ = float(np.median(raw))
        self.raw_high_ = float(np.quantile(raw, 0.999))
        self.classifier_: HistGradientBoostingClassifier | None = None
        if y is None:
            return self
        failing = int(y.sum())
        if min(failing, len(y) - failing) < CALIBRATION_FOLDS * MIN_POSITIVES:
            return self
        rows = np.arange(len(y))
        positives, negatives = rows[y == 1], rows[y != 1]
        limit = max(self.classifier_max_rows - len(positives), self.classifier_max_rows // 2)
        kept = _sample(negatives, limit, rng)
        fit_X, fit_y, weights = X, y, None
        if kept is not None:
            rows = np.sort(np.concatenate([positives, kept]))
            weights = np.where(y[rows] == 1, 1.0, len(negatives) / len(kept))
            fit_X, fit_y = X[rows], y[rows]
        base = HistGradientBoostingClassifier(
            max_iter=150, learning_rate=0.1, l2_regularization=1.0, random_state=self.seed
        )
        # Out-of-fold calibration: each fold's rows are scored by a classifier that did not
        # see them, one isotonic map turns all those scores into probabilities, and the
        # served classifier is fitted on every row. So the calibration sees every failure
        # of the history: fitted on the latest fifth alone, a short history's few failures
        # there flattened the probabilities to one value. Unshuffled stratified folds keep
        # each fold's failures together in time (neighbouring snapshots of one failure
        # would leak across shuffled folds). Isotonic, not a sigmoid: on long simulated
        # histories a sigmoid capped the surest failures lower and drained ~3 min later.
        # The subsample's weights go to the calibration only: the classifier just ranks,
        # and weighted rows make its binning ~10x slower (weighted percentiles).
        folds = StratifiedKFold(n_splits=CALIBRATION_FOLDS, shuffle=False)
        with _threadpools().limit(limits=effective_n_jobs(self.n_jobs), user_api="openmp"):
            scores = cross_val_predict(base, fit_X, fit_y, cv=folds, method="predict_proba")
            self.classifier_ = base.fit(fit_X, fit_y)
        self.calibration_ = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        self.calibration_.fit(scores[:, 1], fit_y, sample_weight=weights)
        return self

    def anomaly_score(self, X: np.ndarray) -> np.ndarray:
        raw = self.forest_.raw_anomaly(X)
        span = max(self.raw_high_ - self.raw_median_, 1e-9)
        return np.clip((raw - self.raw_median_) / span, 0.0, 1.0)

    def failure_probability(self, X: np.ndarray) -> np.ndarray | None:
        if self.classifier_ is None:
            return None
        # The engine asks about a handful of nodes at a time: OpenMP threads only add
        # start-up and contention there (3x slower on 2 cores, far worse under load).
        with _threadpools().limit(limits=1, user_api="openmp"):
            score = self.classifier_.predict_proba(X)[:, 1]
        return self.calibration_.predict(score)
