"""The one feature definition: online (numpy state) and batch (pandas) agree."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from predictor.features import FEATURES, OnlineFeatures, batch_features


def online_rows(samples: pd.DataFrame) -> np.ndarray:
    """Feed samples one at a time, as a live fleet would; keep the in-order rows."""
    state = OnlineFeatures()
    keys: dict[tuple[str, str], int] = {}
    rows = []
    for r in samples.itertuples():
        key = keys.setdefault((r.node, r.metric), len(keys))
        if state.update(np.array([key]), np.array([r.value]), np.array([r.ts]))[0]:
            rows.append(state.values_[key].copy())
    return np.array(rows).reshape(-1, len(FEATURES))


sample_rows = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.sampled_from(["cpu", "mem"]),
        # Millisecond timestamps (Prometheus' resolution): a gap of 1e-308 s
        # overflows a slope to inf, which neither path has to agree on.
        st.floats(0, 10_000, allow_nan=False).map(lambda t: round(t, 3)),
        st.floats(-1e6, 1e6, allow_nan=False),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(sample_rows)
def test_online_equals_batch_on_any_history(rows: list[tuple[str, str, float, float]]) -> None:
    samples = pd.DataFrame(rows, columns=["node", "metric", "ts", "value"])
    batch = batch_features(samples)[list(FEATURES)].to_numpy()
    online = online_rows(samples)
    assert batch.shape == online.shape
    np.testing.assert_allclose(batch, online, rtol=1e-7, atol=1e-6)


def test_out_of_order_samples_do_not_move_features() -> None:
    samples = pd.DataFrame(
        {
            "node": ["a"] * 4,
            "metric": ["cpu"] * 4,
            "ts": [10.0, 20.0, 15.0, 30.0],
            "value": [1.0, 2.0, 100.0, 3.0],
        }
    )
    out = batch_features(samples)
    assert out["ts"].tolist() == [10.0, 20.0, 30.0]
    assert out["last"].max() == 3.0
    assert online_rows(samples).shape[0] == 3


def test_features_describe_a_ramp() -> None:
    ts = np.arange(100) * 60.0
    samples = pd.DataFrame(
        {"node": "a", "metric": "mem", "ts": ts, "value": 0.5 + 0.001 * np.arange(100)}
    )
    last = batch_features(samples).iloc[-1]
    assert last["slope"] > 0  # the trend is up
    assert abs(last["rate"] - 0.001 / 60) < 1e-9
    assert last["gap"] == 60.0
    assert last["drift"] > 1  # the recent level left the long-run one


def test_a_level_shift_is_a_large_robust_z() -> None:
    values = np.r_[np.random.default_rng(0).normal(1.0, 0.01, 60), 2.0]
    samples = pd.DataFrame({"node": "a", "metric": "cpu", "ts": np.arange(61.0), "value": values})
    assert batch_features(samples).iloc[-1]["robust_z"] > 20
