"""Drain scoring: recall, lead times, false drains, and leads counted from a precursor's onset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from predictor.evaluation.fleet import (
    failure_leads,
    head_to_head,
    pooled_head_to_head,
    ratio_interval,
    score_drains,
)
from predictor.evaluation.report import head_to_head_line, head_to_head_table


def test_leads_from_the_onset_ignore_drains_made_before_the_precursor() -> None:
    events = pd.DataFrame(
        {
            "node": ["a", "b", "c"],
            "ts": [10_000.0, 20_000.0, 30_000.0],
            "kind": ["failure"] * 3,
            "mode": ["memory_leak", "sudden_crash", "disk_fill"],
            "precursor_start_ts": [8_000.0, np.nan, 29_000.0],
        }
    )
    drains = pd.DataFrame(
        {"node": ["a", "a", "b", "c", "z"], "ts": [5_000.0, 9_000.0, 19_000.0, 28_000.0, 1.0]}
    )
    samples = pd.DataFrame({"node": ["a", "a"], "ts": [0.0, 86_400.0]})
    leads = failure_leads(drains=drains, events=events)
    assert leads["lead_s"].tolist() == [5_000.0, 1_000.0, 2_000.0]
    assert leads["onset_lead_s"].tolist()[0] == 1_000.0  # the drain after the onset
    assert np.isnan(leads["onset_lead_s"].tolist()[1])  # no precursor, no onset lead
    assert np.isnan(leads["onset_lead_s"].tolist()[2])  # its only drain came before it
    result = score_drains(drains=drains, events=events, samples=samples)
    assert (result["caught"], result["failures"]) == (3, 3)
    assert (result["precursor_caught"], result["precursor_failures"]) == (2, 2)
    assert result["precursor_caught_after_onset"] == 1
    assert result["median_lead_after_onset_min"] == pytest.approx(1_000 / 60)
    assert result["false_drains"] == 1  # node z never failed


def test_without_onsets_the_extra_figures_are_empty() -> None:
    events = pd.DataFrame({"node": ["a"], "ts": [100.0], "kind": ["failure"]})
    drains = pd.DataFrame({"node": ["a"], "ts": [50.0]})
    samples = pd.DataFrame({"node": ["a", "a"], "ts": [0.0, 86_400.0]})
    result = score_drains(drains=drains, events=events, samples=samples)
    assert result["caught"] == 1 and result["precursor_failures"] == 0
    assert result["median_lead_after_onset_min"] is None


def test_missed_failures_held_back_by_a_safety_limit_are_counted_apart() -> None:
    events = pd.DataFrame({"node": ["a", "b", "c"], "ts": [10_000.0] * 3, "kind": ["failure"] * 3})
    drains = pd.DataFrame({"node": ["a"], "ts": [9_000.0]})
    # a: drained (its blocked retry is no miss); b: foreseen but blocked; c: never foreseen.
    blocked = pd.DataFrame({"node": ["a", "b"], "ts": [9_500.0, 9_000.0]})
    samples = pd.DataFrame({"node": ["a", "a"], "ts": [0.0, 86_400.0]})
    result = score_drains(drains=drains, events=events, samples=samples, blocked=blocked)
    assert result["caught"] == 1
    assert result["missed_held_back"] == 1
    assert score_drains(drains=drains, events=events, samples=samples)["missed_held_back"] is None


def test_head_to_head_compares_two_detectors_on_the_failures_both_caught() -> None:
    events = pd.DataFrame(
        {
            "node": ["a", "b", "c", "d"],
            "ts": [10_000.0] * 4,
            "kind": ["failure"] * 4,
            "mode": ["leak", "disk", "leak", "crash"],
            "precursor_start_ts": [4_000.0, 2_000.0, 9_000.0, np.nan],
        }
    )
    # a: both, ours 3000 s before; b: both, the rival earlier; c: ours only, 60 s before
    # (it would pull our own median down); d: no precursor, left out.
    ours = pd.DataFrame({"node": ["a", "b", "c", "d"], "ts": [7_000.0, 9_000.0, 9_940.0, 1.0]})
    rival = pd.DataFrame({"node": ["a", "b", "d"], "ts": [9_400.0, 8_000.0, 9_000.0]})
    pair = head_to_head(ours=ours, rival=rival, events=events)
    assert (pair["both_caught"], pair["only_ours"], pair["only_rival"]) == (2, 1, 0)
    assert pair["ours_median_min"] == pytest.approx((3_000 + 1_000) / 2 / 60)
    assert pair["rival_median_min"] == pytest.approx((600 + 2_000) / 2 / 60)
    assert pair["ours_earlier"] == 1
    # A drain at the onset of a's and b's precursors (6000 and 8000 s long; c's is not
    # one both caught) would lead by their lengths.
    assert pair["precursor_median_min"] == pytest.approx(7_000 / 60)
    # Per mode, on the same failures: the leak a (c is ours only) and the disk b.
    assert pair["per_mode"] == {
        "disk": {"both_caught": 1, "ours_median_min": pytest.approx(1_000 / 60),
                 "rival_median_min": pytest.approx(2_000 / 60),
                 "precursor_median_min": pytest.approx(8_000 / 60)},
        "leak": {"both_caught": 1, "ours_median_min": pytest.approx(3_000 / 60),
                 "rival_median_min": pytest.approx(600 / 60),
                 "precursor_median_min": pytest.approx(6_000 / 60)},
    }  # fmt: skip
    table = head_to_head_table(pair).splitlines()
    assert table[2:] == [
        "| disk | 1 | 17 | 33 | 0.5x | 133 | 4.0x |",
        "| leak | 1 | 50 | 10 | 5.0x | 100 | 10.0x |",
    ]


def test_the_ratio_of_the_medians_comes_with_a_bootstrap_interval() -> None:
    rng = np.random.default_rng(3)
    rival = rng.uniform(5, 40, 200)
    ours = rival + rng.uniform(0, 50, 200)  # ahead of the rival by a varying margin
    ratio = np.median(ours) / np.median(rival)
    wide = ratio_interval(ours[:10], rival[:10])
    narrow = ratio_interval(ours, rival)
    assert wide is not None and narrow is not None
    assert narrow[0] < ratio < narrow[1]
    # Ten failures say much less than two hundred.
    assert wide[1] - wide[0] > 2 * (narrow[1] - narrow[0])
    # Identical leads: no doubt at all; one failure: no interval.
    assert ratio_interval(rival, rival) == [1.0, 1.0]
    assert ratio_interval(ours[:1], rival[:1]) is None


def test_the_head_to_head_line_gives_the_interval() -> None:
    events = pd.DataFrame(
        {"node": ["a", "b", "c"], "ts": [10_000.0] * 3, "kind": ["failure"] * 3,
         "precursor_start_ts": [2_000.0] * 3}
    )  # fmt: skip
    ours = pd.DataFrame({"node": ["a", "b", "c"], "ts": [6_000.0, 7_000.0, 8_000.0]})
    rival = pd.DataFrame({"node": ["a", "b", "c"], "ts": [8_000.0, 9_000.0, 9_500.0]})
    pair = head_to_head(ours=ours, rival=rival, events=events)
    low, high = pair["ratio_interval"]
    assert low < 3_000 / 1_000 < high  # the medians' ratio
    assert f"(3.0x, 90% bootstrap interval over these failures {low:.1f}x-{high:.1f}x)" in (
        head_to_head_line(pair)
    )


def test_pooled_head_to_head_keeps_each_fleets_nodes_apart() -> None:
    # Two fleets, each with its own node "a" failing at the same time: one drain on one
    # fleet's "a" must not count for the other's.
    events = pd.DataFrame(
        {"node": ["a"], "ts": [10_000.0], "kind": ["failure"], "precursor_start_ts": [2_000.0]}
    )
    early = pd.DataFrame({"node": ["a"], "ts": [4_000.0]})
    late = pd.DataFrame({"node": ["a"], "ts": [9_000.0]})
    none = pd.DataFrame({"node": pd.Series([], dtype=object), "ts": pd.Series([], dtype=float)})
    pooled = pooled_head_to_head([(early, late, events), (late, none, events)])
    assert (pooled["both_caught"], pooled["only_ours"], pooled["only_rival"]) == (1, 1, 0)
    assert pooled["ours_median_min"] == pytest.approx(6_000 / 60)
    pooled = pooled_head_to_head([(early, late, events), (late, early, events)])
    assert pooled["both_caught"] == 2
    assert pooled["ours_median_min"] == pooled["rival_median_min"] == pytest.approx(3_500 / 60)
