"""The HTTP API: one router per resource, thin routes over :mod:`predictor.service`."""

from predictor.api.app import create_app

__all__ = ["create_app"]
