"""deploy/: the Prometheus rules and config pass promtool; the dashboard uses our metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from predictor.config import Settings
from predictor.service import Runtime

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "predictor-rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "predictor-dashboard.json"
PROMTOOL = shutil.which("promtool")
METRIC_NAME = re.compile(r"\bpredictor_[a-z_]+\b")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="no promtool (Debian's prometheus)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PROMTOOL), *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def exposed(settings: Settings) -> set[str]:
    """Every sample name the service's /metrics can carry."""
    runtime = Runtime.build(settings)
    try:
        names = set()
        for family in runtime.telemetry.registry.collect():
            names.add(family.name)
            if family.type == "counter":
                names.add(family.name + "_total")
        return names
    finally:
        runtime.stop()


@needs_promtool
def test_rules_and_example_config_pass_promtool() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr


@needs_promtool
def test_rules_fire_as_their_unit_tests_say() -> None:
    result = promtool("test", "rules", str(Path(__file__).with_name("predictor-rules.test.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_reference_only_metrics_we_expose(exposed: set[str]) -> None:
    used = set(METRIC_NAME.findall(RULES.read_text()))
    assert "predictor_node_risk" in used
    assert used <= exposed, used - exposed


def test_dashboard_is_valid_and_charts_our_metrics(exposed: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    exprs = []
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["targets"], panel
        exprs += [target["expr"] for target in panel["targets"]]
    used = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    assert used <= exposed, used - exposed
    wanted = {
        "predictor_node_risk",
        "predictor_ingested_samples_total",
        "predictor_ingest_requests_total",
        "predictor_scoring_lag_seconds",
        "predictor_scoring_lag_rows",
        "predictor_actions_total",
    }
    assert wanted <= used, wanted - used


def test_systemd_example_names_only_real_settings_and_roles() -> None:
    systemd = ROOT / "deploy" / "systemd"
    text = "\n".join(p.read_text() for p in sorted(systemd.iterdir()))
    names = set(re.findall(r"\bPREDICTOR_([A-Z0-9_]+)=", text))
    assert {"DATABASE_URL", "NATS_URL", "WORKER_ID"} <= names
    unknown = {n for n in names if n.lower() not in Settings.model_fields}
    assert not unknown, f"not settings: {unknown}"
    roles = set(re.findall(r"--role (\w+)", text))
    assert roles == {"api", "worker"}
    assert roles <= set(Settings.model_fields["role"].annotation.__args__)  # type: ignore[union-attr]
