"""The engine's shortcuts for the usual batch give what the general path gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from predictor.config import Settings
from predictor.ingest import SampleBatch
from predictor.scoring import ScoringEngine
from predictor.scoring.engine import _bucket_rounds, _factorize, _top_in_groups


def scrape(n_nodes: int, n_metrics: int, step: int, rng: np.random.Generator) -> SampleBatch:
    """One node-major scrape: every node's every metric, jittered within the bucket."""
    size = n_nodes * n_metrics
    nodes = np.repeat([f"n{i}" for i in range(n_nodes)], n_metrics)
    metrics = np.tile([f"m{j}" for j in range(n_metrics)], n_nodes)
    ts = 60.0 * step + rng.uniform(0, 1, size)
    values = np.arange(size) % 5 + rng.normal(0, 1, size)
    values[rng.random(size) < 0.02] += 30.0  # a few spikes, so the why lists differ
    return SampleBatch.from_columns(nodes, metrics, ts, values)


def test_a_shuffled_batch_scores_as_the_node_major_one(settings: Settings) -> None:
    """Node-major scrapes take the shortcuts (runs, sorted keys, slices, reshape);
    the same samples shuffled take the general path, and must give the same results."""
    rng = np.random.default_rng(0)
    steps = [scrape(30, 12, k, rng) for k in range(12)]
    ordered = ScoringEngine(settings=settings)
    shuffled = ScoringEngine(settings=settings)
    ordered.process(steps[0])
    shuffled.process(steps[0])  # the same first batch: the same series keys
    for batch in steps[1:]:
        perm = rng.permutation(len(batch))
        a = ordered.process(batch)
        b = shuffled.process(batch.take(perm))
        np.testing.assert_array_equal(a.sample_scores[perm], b.sample_scores)
        pd.testing.assert_frame_equal(a.risk, b.risk)  # why lists included
    assert (a.risk["why"].map(len) == 3).all()


def test_nodes_with_more_metrics_than_the_rest_rank_their_why_the_same(
    settings: Settings,
) -> None:
    """One node with many metrics makes the padded matrix too ragged: the flat sort."""
    rng = np.random.default_rng(1)
    engine = ScoringEngine(settings=settings)
    for k in range(8):
        wide, narrow = scrape(1, 400, k, rng), scrape(30, 2, k, rng)
        columns = ("node", "metric", "ts", "value")
        batch = SampleBatch.from_columns(
            *(np.concatenate([getattr(wide, c), getattr(narrow, c)]) for c in columns)
        )
        risk = engine.process(batch).risk.set_index("node")
    why = risk.loc["n0", "why"]
    scores = [entry["score"] for entry in why]
    assert len(why) == 3 and scores == sorted(scores, reverse=True)
    assert risk["why"].map(len).drop("n0").eq(2).all()


groups_and_keys = st.integers(1, 6).flatmap(
    lambda n_groups: st.lists(
        st.tuples(
            st.integers(0, n_groups - 1),
            st.sampled_from([0.0, 0.5, 1.0, np.nan]),  # ties and NaN, as scores can have
            st.sampled_from([-2.0, 0.0, 3.0, np.nan]),
        ),
        max_size=40,
    ).map(lambda rows: (n_groups, rows))
)


@settings(max_examples=80, deadline=None)
@given(case=groups_and_keys, top=st.integers(1, 4))
def test_top_in_groups_equals_one_lexsort(case: tuple[int, list], top: int) -> None:
    n_groups, rows = case
    group = np.array([r[0] for r in rows], dtype=np.int64)
    primary = np.array([r[1] for r in rows], dtype=float)
    secondary = np.array([r[2] for r in rows], dtype=float)
    for g in (group, np.sort(group, kind="stable")):  # shuffled and grouped
        order = np.lexsort((secondary, primary, g))
        index = np.arange(len(order))
        rank = np.array([np.sum(g[order][:i] == g[order][i]) for i in index], dtype=np.int64)
        expected = order[rank < top]
        got = _top_in_groups(g, n_groups, (secondary, primary), top)
        np.testing.assert_array_equal(got, expected)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3)), min_size=1, max_size=40))
def test_bucket_rounds_rank_each_nodes_buckets(rows: list[tuple[int, int]]) -> None:
    nodes = np.array([r[0] for r in rows], dtype=np.int64)
    bucket = np.array([r[1] for r in rows], dtype=float) * 10.0
    expected = [sorted({b for n, b in rows if n == node}).index(b) for node, b in rows]
    assert _bucket_rounds(nodes, bucket).tolist() == expected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=30), st.integers(1, 40))
def test_factorize_by_runs_equals_pandas(names: list[str], run: int) -> None:
    values = np.array([n for n in names for _ in range(run)], dtype=object)
    codes, uniques = _factorize(values)
    expected_codes, expected_uniques = pd.factorize(values)
    np.testing.assert_array_equal(codes, expected_codes)
    assert uniques.tolist() == list(expected_uniques)
