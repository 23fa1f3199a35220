"""The columnar sample batch that travels through the service."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class SampleBatch:
    """Samples as columns: one numpy array per field, all of the same length.

    >>> b = SampleBatch.from_columns(["a", "a"], ["cpu", "mem"], [1.0, 1.0], [0.5, 0.7])
    >>> len(b), b.value.dtype.name
    (2, 'float64')
    """

    node: np.ndarray  # object array of str
    metric: np.ndarray  # object array of str
    ts: np.ndarray  # float64 unix seconds
    value: np.ndarray  # float64

    @classmethod
    def from_columns(cls, node, metric, ts, value) -> SampleBatch:  # type: ignore[no-untyped-def]
        return cls(
            node=np.asarray(node, dtype=object),
            metric=np.asarray(metric, dtype=object),
            ts=np.asarray(ts, dtype=np.float64),
            value=np.asarray(value, dtype=np.float64),
        )

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> SampleBatch:
        return cls.from_columns(frame["node"], frame["metric"], frame["ts"], frame["value"])

    @classmethod
    def empty(cls) -> SampleBatch:
        return cls.from_columns([], [], [], [])

    @classmethod
    def concat(cls, batches: list[SampleBatch]) -> SampleBatch:
        if not batches:
            return cls.empty()
        return cls(
            node=np.concatenate([b.node for b in batches]),
            metric=np.concatenate([b.metric for b in batches]),
            ts=np.concatenate([b.ts for b in batches]),
            value=np.concatenate([b.value for b in batches]),
        )

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, index: np.ndarray) -> SampleBatch:
        return SampleBatch(self.node[index], self.metric[index], self.ts[index], self.value[index])

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"node": self.node, "metric": self.metric, "ts": self.ts, "value": self.value}
        )
