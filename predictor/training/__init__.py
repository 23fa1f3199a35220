"""Batch training, the model registry and promotion."""

from predictor.training.model import BatchModel
from predictor.training.registry import ModelError, ModelRegistry
from predictor.training.train import build_snapshots, train, train_and_register

__all__ = [
    "BatchModel",
    "ModelError",
    "ModelRegistry",
    "build_snapshots",
    "train",
    "train_and_register",
]
