"""``run_evaluation`` end to end on a very small fleet and a tiny NAB corpus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from predictor.config import Settings
from predictor.evaluation.run import DETECTORS, run_evaluation
from predictor.simulate import FleetSpec, simulate, write_dataset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny_nab(root: Path) -> Path:
    """Two series of 300 records, one labelled window, and a perfect 'numenta' result."""
    ts = pd.date_range("2020-01-01", periods=300, freq="5min")
    rng = np.random.default_rng(0)
    windows: dict[str, list[list[str]]] = {"c/flat.csv": [], "c/spike.csv": []}
    windows["c/spike.csv"] = [[str(ts[200]), str(ts[220])]]
    for name in windows:
        values = rng.normal(10, 0.5, len(ts))
        if name == "c/spike.csv":
            values[205:210] += 20
        label = np.zeros(len(ts), dtype=int)
        for a, b in windows[name]:
            label[(ts >= a) & (ts <= b)] = 1
        frame = pd.DataFrame({"timestamp": ts.strftime("%Y-%m-%d %H:%M:%S"), "value": values})
        (root / "data" / "c").mkdir(parents=True, exist_ok=True)
        frame.to_csv(root / "data" / name, index=False)
        ref = root / "reference_results" / "numenta" / "c"
        ref.mkdir(parents=True, exist_ok=True)
        frame.assign(anomaly_score=label.astype(float), label=label).to_csv(
            ref / f"numenta_{name.split('/')[1]}", index=False
        )
    (root / "labels").mkdir()
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    return root


@pytest.mark.integration
def test_run_evaluation_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    figures = run_evaluation(
        out_dir=out, nodes=3, days=0.25, step_s=120.0, failure_rate=6.0,
        nab_dir=_tiny_nab(tmp_path / "nab"), nab_results_dir=tmp_path / "results",
        settings=Settings(models_dir=tmp_path / "models"), show_progress=False,
    )  # fmt: skip
    md = (out / "evaluation.md").read_text()
    for section in (
        "## Fleet evaluation",
        "### simulated, simple names",
        "### simulated, prometheus names",
        "Recall per failure mode",
        "Head to head, on the",
        "a drain at each precursor's first sample",
        "Each static rule alone",
        "predict_linear(disk[1h], 4h) > 1",
        "## NAB (development subset)",
        "| **ensemble** |",
        "| numenta | reference results",
        "| numenta (HTM) | published | 73.56 | 68.36 | 77.04 |",
        "## Plots",
    ):
        assert section in md, section
    for detector in DETECTORS:
        assert f"| {detector} |" in md

    written = json.loads((out / "evaluation.json").read_text())
    assert written == figures
    cases = written["fleet"]
    assert set(cases) == {"simulated, simple names", "simulated, prometheus names"}
    simple = cases["simulated, simple names"]["detectors"]
    assert set(simple) == set(DETECTORS)
    failures = simple["predictor"]["failures"]
    assert failures > 0  # the fixed seeds at this rate do produce failures
    for scores in simple.values():
        assert scores["failures"] == failures  # every detector on the same fleet
        assert 0 <= scores["caught"] <= failures
        assert scores["false_drains"] <= scores["drains"]
    pair = cases["simulated, simple names"]["head_to_head_static_rules"]
    assert pair["both_caught"] <= min(
        simple["predictor"]["precursor_caught_after_onset"],
        simple["static rules"]["precursor_caught_after_onset"],
    )
    assert ("Head to head per failure mode:" in md) == bool(pair["per_mode"])
    if pair["both_caught"]:  # no drain after onset leads by more than the precursor lasts
        assert pair["precursor_median_min"] >= max(
            pair["ours_median_min"], pair["rival_median_min"]
        )
    # Our scorer gives the perfect reference result 100 on every profile.
    assert written["nab"]["numenta"]["standard"]["score"] == pytest.approx(100.0)
    assert set(written["nab"]["ensemble"]) == {
        "standard", "reward_low_FP_rate", "reward_low_FN_rate",
    }  # fmt: skip
    for plot in written["plots"]:
        assert (out / plot).read_bytes().startswith(PNG_MAGIC)
        assert f"]({plot})" in md
    assert {"lead_times.png", "false_drains.png"} <= set(written["plots"])
    assert (tmp_path / "results" / "ensemble" / "c" / "ensemble_spike.csv").exists()


@pytest.mark.integration
def test_several_fleets_per_naming_are_evaluated_and_pooled(tmp_path: Path) -> None:
    figures = run_evaluation(
        out_dir=tmp_path / "reports", nodes=4, days=0.5, step_s=120.0, failure_rate=6.0,
        fleets=2, detectors=("predictor", "static rules"), nab_dir=tmp_path / "absent",
        settings=Settings(models_dir=tmp_path / "models"), show_progress=False,
    )  # fmt: skip
    cases = figures["fleet"]
    assert set(cases) == {
        "simulated, simple names", "simulated, simple names, seed 9101",
        "simulated, prometheus names", "simulated, prometheus names, seed 9102",
    }  # fmt: skip
    seeds = {"simple": [9001, 9101], "prometheus": [9002, 9102]}
    assert figures["run"]["evaluation_seeds"] == seeds
    pooled = figures["pooled_head_to_head_static_rules"]
    pairs = [case["head_to_head_static_rules"] for case in cases.values()]
    # Half a day is too short for our detectors to warm up, not for the rules.
    for count in ("both_caught", "only_ours", "only_rival"):
        assert pooled[count] == sum(pair[count] for pair in pairs)
    assert pooled["only_rival"] > 0
    assert "### All fleets pooled" in (tmp_path / "reports" / "evaluation.md").read_text()


def test_run_evaluation_on_a_dataset_dir_splits_it_in_time(tmp_path: Path) -> None:
    spec = FleetSpec(nodes=3, pools=1, duration_s=6 * 3600, step_s=120.0, seed=5)
    fleet = simulate(spec)
    write_dataset(fleet, tmp_path / "data")
    (tmp_path / "data" / "nodes.json").unlink()  # optional
    out = tmp_path / "reports"
    figures = run_evaluation(
        out_dir=out, data=tmp_path / "data", detectors=("static rules",),
        nab_dir=tmp_path / "absent", show_progress=False,
    )  # fmt: skip
    md = (out / "evaluation.md").read_text()
    assert "NAB skipped" in md
    (case,) = figures["fleet"].values()
    assert "from" in case["description"]  # evaluated on the later half only
    rules = case["detectors"]["static rules"]
    ts = fleet.samples["ts"]
    later = fleet.events[fleet.events["ts"] >= ts.min() + (ts.max() - ts.min()) / 2]
    assert rules["failures"] == int((later["kind"] == "failure").sum())
    assert rules["node_days"] == pytest.approx(3 * 0.25 / 2, rel=0.05)


def test_the_baselines_run_alone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """river HST and IsolationForest are compared alone: without the evidence detectors
    (which would then make most of their drains) and, for HST, without a batch model."""
    from predictor.evaluation import run

    replayed: dict[str, tuple[Settings, object]] = {}

    def record(fleet, settings, model, report):  # type: ignore[no-untyped-def]
        name = "river HST" if settings.online_detectors == ["river_hst"] else "forest"
        replayed[name] = settings, model
        empty = pd.DataFrame(columns=["node", "ts"])
        return empty, empty, pd.DataFrame()

    monkeypatch.setattr(run, "_replay_drains", record)
    fleet = simulate(FleetSpec(nodes=2, pools=1, duration_s=3600.0, step_s=120.0, seed=5))
    case = run.Fleet(fleet.samples, fleet.events, fleet.nodes)
    stages = run.Stages(None, 1.0)
    run.evaluate_case(
        name="tiny", training=case, evaluation=case, stages=stages,
        settings=Settings(models_dir=tmp_path / "models"),
        detectors=("river HST", "IsolationForest"),
    )  # fmt: skip
    (hst, hst_model), (forest, forest_model) = replayed["river HST"], replayed["forest"]
    assert hst.evidence_detectors == [] and hst_model is None
    assert forest.evidence_detectors == [] and forest.online_detectors == []
    assert forest_model is not None
