"""The feature spec (see :mod:`predictor.features.spec`): one definition, two computations."""

from predictor.features.spec import FEATURES, OnlineFeatures, batch_features

__all__ = ["FEATURES", "OnlineFeatures", "batch_features"]
