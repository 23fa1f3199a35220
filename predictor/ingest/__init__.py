"""Wire formats -> validated columnar :class:`SampleBatch` objects."""

from predictor.ingest.batch import SampleBatch
from predictor.ingest.json_format import IngestError, Limits, parse_metrics_json

__all__ = ["IngestError", "Limits", "SampleBatch", "parse_metrics_json"]
