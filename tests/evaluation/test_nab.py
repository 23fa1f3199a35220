"""The NAB scorer: reproduction of published scores and edge cases on tiny files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from predictor.evaluation.nab import (
    load_corpus,
    nab_table,
    probation_length,
    run_corpus,
    scaled_sigmoid,
    score_results,
)

NAB_DEV = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "nab-dev"
REFERENCE = {
    "numenta": (73.56, 68.36, 77.04),
    "ARTime": (71.05, 62.38, 76.03),
    "null": (0.0, 0.0, 0.0),
}
PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


@pytest.mark.skipif(not NAB_DEV.exists(), reason="NAB dev data not available")
@pytest.mark.parametrize("detector", sorted(REFERENCE))
def test_reproduces_reference_scores(detector: str) -> None:
    result = score_results(
        data_dir=NAB_DEV / "data",
        windows_file=NAB_DEV / "labels" / "combined_windows.json",
        results_dir=NAB_DEV / "reference_results",
        detector=detector,
    )
    for profile, expected in zip(PROFILES, REFERENCE[detector], strict=True):
        assert result[profile]["score"] == pytest.approx(expected, abs=0.05), profile


# -- tiny synthetic corpus --------------------------------------------------------------
N = 100  # records per file: probation = 15
WINDOW = (50, 59)  # inclusive record indices of the one window of file "c/a.csv"


def _ts(n: int = N) -> pd.DatetimeIndex:
    return pd.date_range("2020-01-01", periods=n, freq="5min")


def _corpus(tmp_path: Path, scores: dict[str, np.ndarray], windowed: bool = True) -> dict:
    """Write data, windows and one detector's results; return score_results kwargs."""
    ts = _ts()
    windows: dict[str, list[list[str]]] = {"c/a.csv": [], "c/b.csv": []}
    if windowed:
        windows["c/a.csv"] = [[str(ts[WINDOW[0]]), str(ts[WINDOW[1]])]]
    (tmp_path / "data" / "c").mkdir(parents=True)
    (tmp_path / "res" / "det" / "c").mkdir(parents=True)
    for name in windows:
        fname = name.split("/")[1]
        frame = pd.DataFrame({"timestamp": ts, "value": np.arange(N, dtype=float)})
        frame.to_csv(tmp_path / "data" / name, index=False)
        frame["anomaly_score"] = scores.get(name, np.zeros(N))
        frame["label"] = 0
        frame.to_csv(tmp_path / "res" / "det" / "c" / f"det_{fname}", index=False)
    (tmp_path / "windows.json").write_text(json.dumps(windows))
    return {
        "data_dir": tmp_path / "data",
        "windows_file": tmp_path / "windows.json",
        "results_dir": tmp_path / "res",
        "detector": "det",
    }


def _one(i: int, n: int = N) -> np.ndarray:
    s = np.zeros(n)
    s[i] = 1.0
    return s


def test_probation_length() -> None:
    assert probation_length(100) == 15
    assert probation_length(10_000) == 750


def test_sigmoid_edges() -> None:
    assert float(scaled_sigmoid(0.0)) == pytest.approx(0.0)
    assert float(scaled_sigmoid(-1.0)) == pytest.approx(0.98661, abs=1e-5)
    assert float(scaled_sigmoid(3.5)) == -1.0


def test_null_detector_scores_zero(tmp_path: Path) -> None:
    result = score_results(**_corpus(tmp_path, {}))
    assert result["standard"]["score"] == 0.0
    assert result["standard"]["fn"] == 1


def test_detection_at_window_start_is_perfect(tmp_path: Path) -> None:
    result = score_results(**_corpus(tmp_path, {"c/a.csv": _one(WINDOW[0])}))
    for profile in PROFILES:
        assert result[profile]["score"] == pytest.approx(100.0)
        assert (result[profile]["tp"], result[profile]["fp"]) == (1, 0)


def test_later_detection_in_window_is_worth_less(tmp_path: Path) -> None:
    result = score_results(**_corpus(tmp_path, {"c/a.csv": _one(WINDOW[1])}))
    # At the right edge p = -1/width: S(-0.1)/S(-1) of the reward, plus the avoided miss.
    reward = float(scaled_sigmoid(-1 / 10) / scaled_sigmoid(-1.0))
    expected = 100 * (reward + 1) / 2
    assert result["standard"]["score"] == pytest.approx(expected)


def test_only_earliest_detection_in_window_counts(tmp_path: Path) -> None:
    scores = np.zeros(N)
    scores[WINDOW[0] : WINDOW[1] + 1] = 1.0
    result = score_results(**_corpus(tmp_path, {"c/a.csv": scores}))
    assert result["standard"]["score"] == pytest.approx(100.0)


def test_probationary_detections_are_ignored(tmp_path: Path) -> None:
    scores = _one(WINDOW[0])
    scores[:15] = 1.0  # all inside probation: no false positives
    result = score_results(**_corpus(tmp_path, {"c/a.csv": scores}))
    assert result["standard"]["score"] == pytest.approx(100.0)
    assert result["standard"]["fp"] == 0


def test_false_positive_before_first_window_costs_full_weight(tmp_path: Path) -> None:
    # An FP on the window-less file "b" costs fpWeight; the TP on "a" gains 1 + 1.
    scores = {"c/a.csv": _one(WINDOW[0]), "c/b.csv": _one(40)}
    result = score_results(**_corpus(tmp_path, scores))
    raw = {p: result[p]["raw"] for p in PROFILES}
    assert raw["standard"] == pytest.approx(1.0 - 0.11)
    assert raw["reward_low_FP_rate"] == pytest.approx(1.0 - 0.22)
    assert result["standard"]["fp"] == 1


def test_false_positive_right_after_window_is_cheap(tmp_path: Path) -> None:
    scores = _one(WINDOW[0])
    scores[WINDOW[1] + 1] = 1.0  # p = 1 / (width - 1): cost fpWeight * S(1/9)
    result = score_results(**_corpus(tmp_path, {"c/a.csv": scores}))
    expected = 1.0 + 0.11 * float(scaled_sigmoid(1 / 9))
    assert result["standard"]["raw"] == pytest.approx(expected)


def test_threshold_is_optimised(tmp_path: Path) -> None:
    # Many weak FPs and one strong TP: the best threshold keeps only the TP.
    scores = np.full(N, 0.3)
    scores[WINDOW[0] + 2] = 0.9
    result = score_results(**_corpus(tmp_path, {"c/a.csv": scores}))
    assert result["standard"]["threshold"] == pytest.approx(0.9)
    assert result["standard"]["fp"] == 0


def test_window_without_records_is_dropped(tmp_path: Path) -> None:
    kwargs = _corpus(tmp_path, {}, windowed=False)
    far = [["2030-01-01 00:00:00", "2030-01-02 00:00:00"]]
    Path(kwargs["windows_file"]).write_text(json.dumps({"c/a.csv": far, "c/b.csv": []}))
    result = score_results(**kwargs)
    assert result["standard"]["fn"] == 0


def test_run_corpus_writes_nab_layout(tmp_path: Path) -> None:
    kwargs = _corpus(tmp_path, {})

    def spike_at_50(keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> np.ndarray:
        return (values == 50.0).astype(float)

    out = run_corpus(
        data_dir=kwargs["data_dir"],
        windows_file=kwargs["windows_file"],
        out_dir=tmp_path / "out",
        name="spike",
        score_fn=spike_at_50,
    )
    frame = pd.read_csv(out / "c" / "spike_a.csv")
    assert list(frame.columns) == ["timestamp", "value", "anomaly_score", "label"]
    assert frame["label"].sum() == WINDOW[1] - WINDOW[0] + 1
    assert len(load_corpus(data_dir=kwargs["data_dir"], windows_file=kwargs["windows_file"])) == 2
    result = score_results(
        data_dir=kwargs["data_dir"],
        windows_file=kwargs["windows_file"],
        results_dir=tmp_path / "out",
        detector="spike",
    )
    # Value 50 is the first record of the window in file "a" but an FP in file "b".
    assert result["standard"]["raw"] == pytest.approx(1.0 - 0.11)


def test_nab_table() -> None:
    table = nab_table({"x": {p: {"score": 12.345} for p in PROFILES}})
    assert "| x | 12.35 | 12.35 | 12.35 |" in table
