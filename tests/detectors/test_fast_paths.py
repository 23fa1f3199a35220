"""The fast paths give the plain paths' numbers, to the last bit.

Detectors read and write their state as slices when a call's keys are one ascending run
(a fleet's scrape), in blocks of ``BLOCK_ROWS`` samples, and in layouts chosen for speed.
The same samples sent shuffled and split over several calls take the plain gather and
scatter path with no block edges: every score and every learnt array must be identical.
(``benchmarks/equivalence.py`` compares whole engines across two checkouts.)
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from predictor.detectors import REGISTRY, SeasonalNovelty, Sustained, base, make_detector
from predictor.detectors.sustained import _bias_weight
from predictor.features import OnlineFeatures

# river's detector keeps one Python model per series: it has no fast path to compare.
FAST = sorted(set(REGISTRY) - {"river_hst"})


def stream(seed: int = 0, n_series: int = 40, steps: int = 230):
    """Per step: a run of keys (series come and go at both ends), values and times."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(-5, 50, n_series)
    noise = rng.uniform(0.0, 2.0, n_series)  # one in a few nearly flat
    ramp = np.where(np.arange(n_series) % 5 == 0, 0.3, 0.0)
    t = 0.0
    for step in range(steps):
        lo = int(rng.integers(0, 4)) if step % 9 == 0 else 0
        hi = min(n_series, 10 + step // 2)  # new series keep appearing
        keys = np.arange(lo, hi)
        t += 60.0 if step % 50 else 3600.0  # now and then a silence
        x = level[keys] + noise[keys] * rng.normal(0, 1, len(keys))
        x += ramp[keys] * max(step - 150, 0)
        x[rng.random(len(keys)) < 0.01] += 40.0
        yield keys, x, t + rng.uniform(0, 5, len(keys))


def learnt(obj: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Every learnt array of a detector and of its members."""
    out: dict[str, np.ndarray] = {}
    for name, value in vars(obj).items():
        if isinstance(value, np.ndarray) and name.endswith("_"):
            out[prefix + name] = value
        elif hasattr(value, "__dict__") and name.endswith("_"):
            out.update(learnt(value, f"{prefix}{name}."))
    return out


@pytest.mark.parametrize("name", FAST)
def test_slices_and_blocks_match_shuffled_split_calls(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "BLOCK_ROWS", 7)  # many block edges on a small stream
    fast, plain = make_detector(name), make_detector(name)
    rng = np.random.default_rng(1)
    for step, (keys, x, t) in enumerate(stream()):
        if step % 11 == 0:  # scoring alone must agree too, and learn nothing
            np.testing.assert_array_equal(
                fast.score_many(keys, x + 3.0, t), plain.score_many(keys, x + 3.0, t)
            )
        fast_scores = fast.score_learn_many(keys, x, t)
        order = rng.permutation(len(keys))
        plain_scores = np.empty(len(keys))
        for part in np.array_split(order, 3):
            plain_scores[part] = plain.score_learn_many(keys[part], x[part], t[part])
        np.testing.assert_array_equal(fast_scores, plain_scores, err_msg=f"step {step}")
    fast_state, plain_state = learnt(fast), learnt(plain)
    assert fast_state.keys() == plain_state.keys()
    for key, value in fast_state.items():
        np.testing.assert_array_equal(value, plain_state[key], err_msg=key)


@pytest.mark.parametrize("alpha", [0.003, 0.05, 0.5, 1e-7])
@pytest.mark.parametrize(("lowest", "shift"), [(0, -1), (1, 0)])
def test_bias_weights_equal_the_formula(alpha: float, lowest: int, shift: int) -> None:
    """The lookup table gives the bits of ``1 - (1 - a) ** n`` at every count."""

    def formula(count: np.ndarray) -> np.ndarray:
        exponent = np.maximum(count + shift, lowest).astype(float)
        return np.maximum(1.0 - (1.0 - alpha) ** exponent, 1e-12)  # type: ignore[no-any-return]

    every = np.concatenate([np.arange(20_000), [10**6, 10**9]]).astype(np.intp)
    weight = _bias_weight(alpha, every, lowest=lowest, shift=shift)
    assert weight is not None
    np.testing.assert_array_equal(weight, formula(every))
    # Only long-lived series: None stands for weights that are all exactly 1.
    old = np.full(3, 10**6, dtype=np.intp)
    weight = _bias_weight(alpha, old, lowest=lowest, shift=shift)
    np.testing.assert_array_equal(np.ones(3) if weight is None else weight, formula(old))


def legacy(detector: Any, convert: dict[str, Any]) -> Any:
    """A detector restored from a checkpoint written in the layout before this one."""
    state = copy.deepcopy(vars(detector))
    for name, rows in convert.items():
        del state[name]
        state.update(rows)
    restored = type(detector).__new__(type(detector))
    restored.__setstate__(state)
    return restored


@pytest.mark.parametrize("name", ["sustained", "seasonal_novelty"])
def test_checkpoints_in_the_old_layout_load_and_score_the_same(name: str) -> None:
    detector = make_detector(name)
    for keys, x, t in stream(steps=120):
        detector.score_learn_many(keys, x, t)
    if isinstance(detector, Sustained):
        old = legacy(detector, {"columns_": {"state_": detector.columns_.T.copy()}})
    else:
        assert isinstance(detector, SeasonalNovelty)
        tables = dict(zip(("vmean_", "vvar_", "dmean_", "dvar_"), detector.profile_, strict=True))
        old = legacy(
            detector,
            {
                "profile_": {k: v.T.copy() for k, v in tables.items()},
                "visits_": {"seen_": detector.visits_.T.copy()},
            },
        )
    for keys, x, t in stream(seed=5, steps=40):
        t = t + 1e6
        np.testing.assert_array_equal(
            old.score_learn_many(keys, x, t), detector.score_learn_many(keys, x, t)
        )


def test_feature_checkpoints_in_the_old_layout_load_and_update_the_same() -> None:
    features = OnlineFeatures()
    for keys, x, t in stream(steps=60):
        features.update(keys, x, t)
    old = legacy(features, {"columns_": {"state_": features.columns_.T.copy()}})
    for keys, x, t in stream(seed=5, steps=20):
        t = t + 1e6
        np.testing.assert_array_equal(old.update(keys, x, t), features.update(keys, x, t))
        np.testing.assert_array_equal(old.values_, features.values_)
    np.testing.assert_array_equal(old.columns_, features.columns_)
