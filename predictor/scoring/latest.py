"""Each node's latest risk row, held as columns so the risk queries need no full scan."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

VALUES = ("ts", "risk", "online", "batch", "p_fail", "trend")  # float columns; then ``why``


class LatestRisk(Mapping[str, dict[str, Any]]):
    """Node -> its latest risk row (``node, ts, risk, online, batch, p_fail, trend, why``).

    A snapshot: ``updated`` returns a new one and never changes this one, so a reader
    holding it sees one consistent fleet while the scorer swaps in the next. Nodes keep
    the order in which they were first remembered (the iteration order, and the tie order
    of ``top``). Snapshots of one lineage share the append-only node positions.

    >>> risk = pd.DataFrame({"node": ["a", "b", "a"], "ts": [1.0, 1.0, 2.0],
    ...     "risk": [0.2, 0.5, 0.9], "online": 0.0, "batch": 0.0, "p_fail": np.nan,
    ...     "trend": 0.0, "why": [[], [], []]})
    >>> latest = LatestRisk().updated(risk)
    >>> [row["node"] for row in latest.top(5)], latest["a"]["risk"]
    (['a', 'b'], 0.9)
    """

    def __init__(self) -> None:
        self._names: list[str] = []  # position -> node; shared, append-only
        self._position: dict[str, int] = {}  # node -> position; shared, append-only
        self._size = 0  # the positions this snapshot holds
        self._values = np.zeros((len(VALUES), 0))
        self._why = np.empty(0, dtype=object)

    @classmethod
    def of(cls, rows: Mapping[str, dict[str, Any]]) -> LatestRisk:
        """From a mapping of node -> row (e.g. a checkpoint written as a dict)."""
        if isinstance(rows, LatestRisk):
            return rows
        if not rows:
            return cls()
        return cls().updated(pd.DataFrame(list(rows.values())))

    def updated(self, risk: pd.DataFrame) -> LatestRisk:
        """A new snapshot with each node's last row of ``risk`` (rows in evaluation order)."""
        if risk.empty:
            return self
        base = self if self._size == len(self._names) else self._fork()
        codes, uniques = pd.factorize(risk["node"].to_numpy(dtype=object))
        last = np.full(len(uniques), -1, dtype=np.int64)
        np.maximum.at(last, codes, np.arange(len(codes)))
        by_last = np.argsort(last, kind="stable")  # new nodes join in order of their last row
        last, names = last[by_last], uniques[by_last].tolist()
        position = base._position
        for name in names:
            if name not in position:
                position[name] = len(base._names)
                base._names.append(name)
        at = np.fromiter((position[n] for n in names), dtype=np.int64, count=len(names))
        new = base._fork(share=True)
        new._values[:, at] = risk[list(VALUES)].to_numpy(dtype=float)[last].T
        new._why[at] = risk["why"].to_numpy(dtype=object)[last]
        return new

    def _fork(self, *, share: bool = False) -> LatestRisk:
        """A copy sized to the lineage's nodes; ``share=False`` also copies the positions
        (updating a snapshot that is not the newest must not disturb its successors)."""
        new = object.__new__(LatestRisk)
        if share:
            new._names, new._position = self._names, self._position
        else:
            new._names = self._names[: self._size]
            new._position = {n: i for i, n in enumerate(new._names)}
        new._size = len(new._names)
        new._values = np.zeros((len(VALUES), new._size))
        new._values[:, : self._size] = self._values
        new._why = np.empty(new._size, dtype=object)
        new._why[: self._size] = self._why
        return new

    # -- queries -------------------------------------------------------------------------
    def top(self, k: int) -> list[dict[str, Any]]:
        """The ``k`` riskiest rows, riskiest first; ties in first-remembered order."""
        # NaN risk says nothing: it ranks last instead of scrambling the order.
        risk = np.nan_to_num(self._values[VALUES.index("risk")], nan=-np.inf)
        candidates = np.arange(self._size)
        if 0 < k < self._size:
            kth = np.partition(risk, self._size - k)[self._size - k]
            candidates = np.flatnonzero(risk >= kth)  # ties at the cut all compete
        ranked = candidates[np.lexsort((candidates, -risk[candidates]))][: max(k, 0)]
        return [self._row(int(i)) for i in ranked]

    def risk_by_node(self) -> dict[str, float]:
        risk = self._values[VALUES.index("risk")]
        return dict(zip(self._names[: self._size], risk.tolist(), strict=True))

    def _row(self, i: int) -> dict[str, Any]:
        row: dict[str, Any] = {"node": self._names[i]}
        row.update(zip(VALUES, self._values[:, i].tolist(), strict=True))
        row["why"] = self._why[i]
        return row

    # -- Mapping -------------------------------------------------------------------------
    def __getitem__(self, node: str) -> dict[str, Any]:
        i = self._position.get(node)
        if i is None or i >= self._size:
            raise KeyError(node)
        return self._row(i)

    def __contains__(self, node: object) -> bool:
        i = self._position.get(node) if isinstance(node, str) else None
        return i is not None and i < self._size

    def __iter__(self) -> Iterator[str]:
        return iter(self._names[: self._size])

    def __len__(self) -> int:
        return self._size
