"""Context novelty: have these short sequences of quantised values been seen before?

After the idea of CAD OSE (contextual anomaly detection, open-source edition): values
are quantised against the series' observed range, and the contexts ending at the current
sample (the current level alone, then with one, two, ... previous levels) are looked up
among the contexts seen so far. The raw score is the fraction of them that are new. Seen
contexts live in a small per-series bit table (hashed), so the state stays a few hundred
bytes.
"""

from __future__ import annotations

import numpy as np

from predictor.detectors.base import OnlineDetector, grow, row_blocks, rows_of

# Multiplicative hashing constant (2^64 / phi) as a wrapping signed 64-bit integer.
_GOLDEN = np.int64(0x9E3779B97F4A7C15 - (1 << 64))


class ContextNovelty(OnlineDetector):
    """Fraction of the contexts ending at the current sample that the series never had.

    Parameters
    ----------
    levels
        Quantisation levels over the series' running ``[min, max]`` range.
    context
        Longest number of previous levels in a context (contexts of every length from
        0 to ``context`` previous levels are checked).
    table_bits
        log2 of the bit-table size per series (``2**table_bits / 8`` bytes).
    min_order
        Shortest number of previous levels in a checked context.
    """

    n_signals = 1
    layout = ("levels", "context", "table_bits")  # how contexts are packed and hashed

    def __init__(self, levels: int = 8, context: int = 2, table_bits: int = 12, min_order: int = 0):
        self.min_order = min_order
        self.levels = levels
        self.context = context
        self.table_bits = table_bits
        self.lo_ = np.zeros(0)  # running min
        self.hi_ = np.zeros(0)  # running max
        self.ctx_ = np.zeros(0, dtype=np.int64)  # previous levels packed base `levels`
        self.table_ = np.zeros((0, 2**table_bits // 8), dtype=np.uint8)
        self.count_ = np.zeros(0, dtype=np.int64)

    def _ensure(self, keys: np.ndarray) -> None:
        size = int(keys.max()) + 1 if len(keys) else 0
        self.lo_ = grow(self.lo_, size)
        self.hi_ = grow(self.hi_, size)
        self.ctx_ = grow(self.ctx_, size)
        self.table_ = grow(self.table_, size)
        self.count_ = grow(self.count_, size)

    def _lookup(self, keys: np.ndarray, at: slice | np.ndarray, values: np.ndarray):  # type: ignore[no-untyped-def]
        count = self.count_[at]
        lo = np.where(count > 0, self.lo_[at], values)
        hi = np.where(count > 0, self.hi_[at], values)
        np.minimum(lo, values, out=lo)
        np.maximum(hi, values, out=hi)
        span = hi - lo
        pos = np.divide(values - lo, span, out=np.zeros_like(values), where=span > 0)
        level = np.minimum((pos * self.levels).astype(np.int64), self.levels - 1)
        ctx = self.ctx_[at] * self.levels + level
        # All context lengths at once, as (order, sample) arrays: the last order+1 levels,
        # tagged with the order so lengths do not collide.
        orders = np.arange(self.min_order, self.context + 1)[:, None]
        h = _mod(ctx, self.levels ** (orders + 1))
        h += orders * self.levels ** (self.context + 1)
        # Multiplicative hashing; int64 products wrap around, which is what it wants.
        h *= _GOLDEN
        h >>= np.int64(64 - self.table_bits)
        h &= np.int64((1 << self.table_bits) - 1)
        # Flat (key, byte) offsets: 1-D fancy indexing is much cheaper than 2-D.
        offset = h >> 3
        offset += keys * self.table_.shape[1]
        bit = (h & 7).astype(np.uint8)
        seen = self.table_.reshape(-1)[offset]
        seen >>= bit
        seen &= 1
        # The fraction of contexts seen (a sum of 0s and 1s over the count: exact).
        novel = 1.0 - seen.sum(axis=0) / len(orders)
        novel = np.where(count > self.context, novel, 0.0)
        slots = (offset, bit)
        return novel, lo, hi, ctx, slots

    def raw_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> list[np.ndarray]:
        """Raw signal (one array of ``len(keys)``), without learning."""
        self._ensure(keys)
        return [self._lookup(keys, rows_of(keys), values)[0]]

    def score_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> np.ndarray:
        return self.raw_many(keys, values, ts)[0]

    def learn_many(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> None:
        self.raw_learn_many(keys, values, ts)

    def raw_learn_many(
        self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray
    ) -> list[np.ndarray]:
        """``raw_many`` then ``learn_many``, block by block: a block's table bytes are
        still in cache when they are written back."""
        self._ensure(keys)
        novel = np.empty(len(keys))
        for part, at in row_blocks(rows_of(keys), len(keys)):
            novel[part] = self._lookup_learn(keys[part], at, values[part])
        return [novel]

    def _lookup_learn(
        self, keys: np.ndarray, at: slice | np.ndarray, values: np.ndarray
    ) -> np.ndarray:
        novel, lo, hi, ctx, slots = self._lookup(keys, at, values)
        offset, bit = slots
        flat = self.table_.reshape(-1)  # a view: writes land in the table
        # One order at a time: within an order each key (row) appears once, so offsets are
        # unique, while two orders of one key may share a byte.
        for off, b in zip(offset, bit, strict=True):
            flat[off] |= np.left_shift(np.uint8(1), b)
        self.lo_[at] = lo
        self.hi_[at] = hi
        self.ctx_[at] = _mod(ctx, self.levels**self.context)
        self.count_[at] += 1
        return novel  # type: ignore[no-any-return]


def _mod(x: np.ndarray, m: np.ndarray | int) -> np.ndarray:
    """``x % m`` for ``x >= 0`` and ``m`` positive: a mask when every ``m`` is a power of two
    (integer division is the costliest step of a lookup otherwise)."""
    m = np.asarray(m)
    if ((m & (m - 1)) == 0).all():
        return x & (m - 1)  # type: ignore[no-any-return]
    return x % m  # type: ignore[no-any-return]
