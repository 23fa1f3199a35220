"""The command line and the `make run` demo."""

from __future__ import annotations

import io
import socket
from pathlib import Path

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
     ["keys", "revoke"]],
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
