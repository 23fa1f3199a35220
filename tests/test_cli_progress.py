"""Progress bars on the long verbs, and `predictor replay` (a dataset through the service path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from predictor.cli import app
from predictor.config import Settings
from predictor.evaluation.fleet import drain_decisions, replay, score_drains
from predictor.simulate import FleetSpec, read_dataset, simulate, write_dataset

runner = CliRunner()


@pytest.fixture
def dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PREDICTOR_MODELS_DIR", str(tmp_path / "models"))  # no model in there
    spec = FleetSpec(
        nodes=4, pools=2, duration_s=6 * 3600, step_s=120, seed=9, failure_rate_per_node_day=4.0
    )
    write_dataset(simulate(spec), tmp_path / "fleet")
    return tmp_path / "fleet"


def test_simulate_shows_a_finished_progress_bar(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    args = ["simulate", "--out", str(out), "--nodes", "4", "--days", "0.1", "--step", "120"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "100%" in result.output and (out / "samples.csv").exists()


def test_replay_prints_the_drain_summary_of_the_service_path(dataset: Path) -> None:
    result = runner.invoke(app, ["replay", "--data", str(dataset), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    # The same replay through the library gives the same drains and the same matching.
    fleet = read_dataset(dataset)
    direct = replay(samples=fleet.samples, nodes=fleet.nodes, settings=Settings(), model=None)
    expected = score_drains(
        drains=drain_decisions(direct.actions), events=fleet.events, samples=fleet.samples
    )
    assert summary["model"] is None
    assert summary["failures"] == int((fleet.events["kind"] == "failure").sum()) > 0
    assert {k: summary[k] for k in expected} == json.loads(json.dumps(expected))


def test_replay_table_and_progress(dataset: Path) -> None:
    result = runner.invoke(app, ["replay", "--data", str(dataset), "--no-model"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "replaying" in out and "100%" in out
    assert "drains vs failures" in out and "online detectors only" in out
