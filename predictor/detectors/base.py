"""The one contract every online detector implements."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np

# Samples per block when row-major state is updated column by column (see row_blocks).
BLOCK_ROWS = 8192


class OnlineDetector(ABC):
    """An online anomaly detector over many independent series at once.

    A *series* is one (node, metric) stream, named by a dense integer key >= 0 that the
    scoring engine assigns. Detectors keep per-series state in arrays indexed by key and
    grow them when a larger key appears, so one detector instance serves a whole fleet.

    Contract
    --------
    - ``score_many(keys, values, ts)`` returns one score per sample in ``[0, 1]``:
      **higher = more anomalous**. It uses only state learnt from earlier samples
      (score before learn) and must not change that state.
    - ``learn_many(keys, values, ts)`` updates the state with the samples.
    - Within one call ``keys`` are unique; calls arrive in event-time order per series.
    - ``values`` are finite floats, ``ts`` unix seconds (float64). Detectors never see
      labels.
    - ``__init__`` only stores its arguments; learnt state lives in attributes ending
      in ``_``; randomness comes from a ``seed`` argument. Instances must survive a
      ``joblib`` round trip and ``clone()``.
    - ``layout`` names the parameters the learnt state is laid out by (see
      :func:`carry_learnt`).

    >>> from predictor.detectors import EwmaZScore
    >>> det = EwmaZScore()
    >>> keys = np.array([0]); ts = np.array([0.0])
    >>> for i in range(50):
    ...     _ = det.score_learn_many(keys, np.array([1.0 + 0.01 * (i % 2)]), ts + i)
    >>> float(det.score_many(keys, np.array([9.0]), ts + 51)[0]) > 0.9
    True
    """

    layout: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def score_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Anomaly scores in [0, 1] for the samples, before learning them."""

    @abstractmethod
    def learn_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> None:
        """Update per-series state with the samples."""

    def score_learn_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Score, then learn: the order the engine always uses. Override to fuse both."""
        scores = self.score_many(keys, values, ts)
        self.learn_many(keys, values, ts)
        return scores

    def score_one(self, key: int, value: float, ts: float) -> float:
        return float(self.score_many(np.array([key]), np.array([value]), np.array([ts]))[0])

    def learn_one(self, key: int, value: float, ts: float) -> None:
        self.learn_many(np.array([key]), np.array([value], dtype=float), np.array([ts]))

    def _get_params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.endswith("_")}

    def clone(self) -> OnlineDetector:
        """A fresh, unfitted detector with the same parameters."""
        return type(self)(**self._get_params())

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._get_params().items())
        return f"{type(self).__name__}({params})"


def carry_learnt(fresh: Any, old: Any) -> Any | None:
    """A copy of ``fresh`` holding what ``old`` learnt, or None if that cannot carry over.

    A service restored from a checkpoint runs today's code: ``fresh`` is made with today's
    parameters (a default changed since is taken), ``old`` comes from the checkpoint.
    Learnt state (attributes ending in ``_``; inner detectors and other learning parts
    carried the same way) moves across unless the classes differ or a parameter named in
    ``layout`` does: state laid out or quantised by other values means nothing now.
    """
    if type(fresh) is not type(old):
        return None
    if any(getattr(fresh, p) != getattr(old, p, None) for p in getattr(fresh, "layout", ())):
        return None
    carried = copy.copy(fresh)
    for name, mine in vars(fresh).items():
        if not name.endswith("_"):
            continue
        if name not in vars(old):
            return None
        theirs = vars(old)[name]
        if _learns(mine):
            theirs = carry_learnt(mine, theirs)
            if theirs is None:
                return None
        setattr(carried, name, theirs)
    return carried


def _learns(part: Any) -> bool:
    return any(name.endswith("_") for name in getattr(part, "__dict__", ()))


def _capacity(have: int, need: int) -> int:
    """Length to grow to: doubling, so a fleet registered series by series costs O(n)."""
    return max(need, 2 * have, 16)


def grow(array: np.ndarray, size: int, fill: float = 0.0) -> np.ndarray:
    """Return ``array`` extended along axis 0 to at least ``size`` rows (amortised doubling)."""
    if len(array) >= size:
        return array
    # Zeros come from the allocator as untouched pages: a fleet's first scrape grows
    # arrays to millions of rows at once.
    shape = (_capacity(len(array), size), *array.shape[1:])
    out = np.zeros(shape, dtype=array.dtype) if fill == 0 else np.full(shape, fill, array.dtype)
    out[: len(array)] = array
    return out


def grow_columns(array: np.ndarray, size: int) -> np.ndarray:
    """Return a ``(quantity, series)`` array extended along axis 1 to at least ``size``.

    Each quantity's row stays contiguous (C order), so a run of series is a plain slice.
    """
    width = array.shape[1]
    if width >= size:
        return array
    out = np.zeros((len(array), _capacity(width, size)), dtype=array.dtype)
    out[:, :width] = array
    return out


def rows_of(keys: np.ndarray) -> slice | np.ndarray:
    """``keys`` as an index into per-series arrays: a slice when they are one ascending run.

    A full scrape of a fleet arrives as every series in key order; a slice then reads
    contiguous memory without the gather (and copy) of fancy indexing.
    """
    n = len(keys)
    if n > 1 and keys[-1] - keys[0] == n - 1 and (keys[1:] - keys[:-1] == 1).all():
        return slice(int(keys[0]), int(keys[-1]) + 1)
    return keys


def row_blocks(
    at: slice | np.ndarray, n: int, size: int | None = None
) -> Iterator[tuple[slice, slice | np.ndarray]]:
    """Cut ``n`` samples addressed by ``at`` (from :func:`rows_of`) into blocks of ``size``.

    Yields each block's positions among the samples and its index into per-series
    arrays. Row-major state (a row of quantities per series) is read and written column by
    column; one block's rows stay in cache across those passes, a whole fleet's do not.
    """
    size = size or BLOCK_ROWS  # read at call time: tests shrink it to cross block edges
    for lo in range(0, n, size):
        hi = min(lo + size, n)
        if isinstance(at, slice):
            yield slice(lo, hi), slice(at.start + lo, at.start + hi)
        else:
            yield slice(lo, hi), at[lo:hi]
