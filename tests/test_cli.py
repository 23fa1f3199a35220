"""The command line and the `make run` demo."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from predictor.cli import app
from predictor.config import Settings
from predictor.demo import run_demo

runner = CliRunner()


@pytest.mark.parametrize(
    "verb",
    [[], ["serve"], ["train"], ["retrain"], ["simulate"], ["status"], ["demo"], ["models", "list"],
     ["models", "promote"], ["models", "rollback"], ["keys"], ["keys", "create"], ["keys", "list"],
     ["keys", "revoke"], ["nab"], ["nab", "run"], ["nab", "score"]],
)  # fmt: skip
def test_every_verb_has_help(verb: list[str]) -> None:
    result = runner.invoke(app, [*verb, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_serve_help_names_host_port_db() -> None:
    out = runner.invoke(app, ["serve", "--help"]).output
    assert all(flag in out for flag in ("--host", "--port", "--db"))


def test_simulate_train_list_rollback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREDICTOR_MODELS_DIR", str(tmp_path / "models"))
    data = tmp_path / "sim"
    args = ["simulate", "--out", str(data), "--nodes", "8", "--days", "1", "--step", "120"]
    assert runner.invoke(app, args).exit_code == 0
    assert (data / "samples.csv").exists() and (data / "events.csv").exists()
    for _ in range(2):
        result = runner.invoke(app, ["train", "--data", str(data)])
        assert result.exit_code == 0, result.output
        assert '"promoted": true' in result.output
    listing = runner.invoke(app, ["models", "list"]).output
    assert listing.count("v20") == 2 and "*" in listing
    assert runner.invoke(app, ["models", "rollback"]).exit_code == 0
    assert runner.invoke(app, ["models", "rollback"]).exit_code != 0  # nothing older


@pytest.mark.integration
def test_demo_serves_streams_and_stops_cleanly(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(db=tmp_path / "demo.db", models_dir=tmp_path / "models", port=port)
    out = io.StringIO()
    console = Console(file=out, width=140, force_terminal=False)
    run_demo(settings=settings, nodes=6, speed=6000, seed=3, duration_s=6, console=console)
    text = out.getvalue()
    assert "riskiest nodes" in text and "decisions (audit log)" in text
    assert "stopped cleanly" in text
    assert settings.db.exists() and settings.checkpoint_path.exists()


NAB_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "nab-dev"


@pytest.mark.skipif(not NAB_DEV.exists(), reason="NAB dev data not available")
def test_nab_score_prints_the_reference_scores() -> None:
    result = runner.invoke(app, [
        "nab", "score", "--data", str(NAB_DEV / "data"),
        "--windows", str(NAB_DEV / "labels" / "combined_windows.json"),
        "--results", str(NAB_DEV / "reference_results"), "--detectors", "numenta,null",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "| numenta | 73.56 | 68.36 | 77.04 |" in result.output  # the README's figures
    assert "| null | 0.00 | 0.00 | 0.00 |" in result.output


def test_nab_run_writes_the_results_layout_through_the_engine(tmp_path: Path) -> None:
    data = tmp_path / "data" / "cat"
    data.mkdir(parents=True)
    stamps = [f"2020-01-01 00:{m:02d}:00" for m in range(40)]
    for name, jump in (("a.csv", 30), ("b.csv", None)):
        values = [1.0 + (50.0 if jump is not None and i >= jump else 0.0) for i in range(40)]
        rows = "\n".join(f"{t},{v}" for t, v in zip(stamps, values, strict=True))
        (data / name).write_text("timestamp,value\n" + rows + "\n")
    windows = tmp_path / "windows.json"
    windows.write_text(
        '{"cat/a.csv": [["2020-01-01 00:28:00", "2020-01-01 00:34:00"]], "cat/b.csv": []}'
    )
    out = tmp_path / "results"
    args = ["--data", str(tmp_path / "data"), "--windows", str(windows)]
    result = runner.invoke(
        app, ["nab", "run", *args, "--out", str(out), "--name", "p", "--detector", "ewma_z"]
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "p" / "cat" / "p_a.csv")
    assert list(frame.columns) == ["timestamp", "value", "anomaly_score", "label"]
    assert frame["label"].sum() == 7
    assert frame["anomaly_score"].iloc[30] > frame["anomaly_score"].iloc[20]  # the jump
    scored = runner.invoke(app, ["nab", "score", *args, "--results", str(out), "--detectors", "p"])
    assert scored.exit_code == 0 and "| p |" in scored.output
