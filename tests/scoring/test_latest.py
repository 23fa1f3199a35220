"""The columnar latest-risk view answers exactly as a dict of each node's last row would."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from predictor.scoring.latest import LatestRisk

COLUMNS = ["node", "ts", "risk", "online", "batch", "p_fail", "trend", "why"]

risk_rows = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d", "e"]),
        st.sampled_from([0.0, 0.25, 0.5, 1.0]),  # few values: ties at every cut
        st.sampled_from([np.nan, 0.3]),
    ),
    max_size=12,
)


def frame(rows: list[tuple[str, float, float]], step: int) -> pd.DataFrame:
    return pd.DataFrame(
        [
            (node, float(step), risk, risk / 2, 0.0, p_fail, 0.1, [{"metric": f"m{i}"}])
            for i, (node, risk, p_fail) in enumerate(rows)
        ],
        columns=COLUMNS,
    )


def as_plain(rows: Any) -> list[tuple[Any, ...]]:
    """Rows comparable with ==, NaN included."""
    return [tuple("nan" if v != v else v for v in row.values()) for row in rows]


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(risk_rows, max_size=5), k=st.integers(0, 7))
def test_matches_a_dict_of_last_rows(steps: list[list[Any]], k: int) -> None:
    latest, reference = LatestRisk(), {}
    for step, rows in enumerate(steps):
        risk = frame(rows, step)
        latest = latest.updated(risk)
        reference = dict(reference)
        for row in risk.drop_duplicates("node", keep="last").to_dict("records"):
            reference[row["node"]] = row
    assert list(latest) == list(reference)  # the same nodes in the same order
    assert as_plain(latest.values()) == as_plain(reference.values())
    expected = sorted(reference.values(), key=lambda r: -r["risk"])[:k]
    assert as_plain(latest.top(k)) == as_plain(expected)
    assert latest.risk_by_node() == {n: r["risk"] for n, r in reference.items()}


def test_a_snapshot_does_not_change_when_a_newer_one_is_made() -> None:
    first = LatestRisk().updated(frame([("a", 0.5, np.nan)], 0))
    second = first.updated(frame([("a", 0.9, np.nan), ("b", 1.0, np.nan)], 1))
    assert list(first) == ["a"] and first["a"]["risk"] == 0.5 and "b" not in first
    assert [r["node"] for r in second.top(2)] == ["b", "a"]
    # Updating the older snapshot again forks it: the newer one keeps its own nodes.
    other = first.updated(frame([("c", 0.1, np.nan)], 2))
    assert list(other) == ["a", "c"] and list(second) == ["a", "b"]


def test_survives_pickle_and_reads_old_dict_checkpoints() -> None:
    latest = LatestRisk().updated(frame([("a", 0.5, 0.3), ("b", 0.2, np.nan)], 0))
    restored = pickle.loads(pickle.dumps(latest))
    assert as_plain(restored.values()) == as_plain(latest.values())
    from_dict = LatestRisk.of({n: latest[n] for n in latest})
    assert as_plain(from_dict.values()) == as_plain(latest.values())
    assert LatestRisk.of({}).top(3) == []
