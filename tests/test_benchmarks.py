"""The benchmarks run end to end on tiny workloads and report every figure (no timings asserted)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from benchmarks.run import BENCHMARKS, print_table, run, table

TINY = {
    "ingest": {"n_nodes": 20, "n_metrics": 5, "n_steps": 2, "per_request": 50},
    "scoring": {
        "n_nodes": 30, "n_metrics": 4, "warm_steps": 1, "steps": 2,
        "river_series": 3, "river_steps": 2,
    },
    "memory": {"sizes": ((10, 3), (40, 3))},
    "queries": {"n_nodes": 20, "n_metrics": 3, "n_steps": 2, "requests": 12},
    "training": {"sizes": (3_000, 6_000)},
    "end_to_end": {
        "ladder": (10,), "big": 0, "n_metrics": 3, "intervals": 2, "interval_s": 0.5,
        "drain_timeout_s": 60.0,
    },
    "scale_out": {"n_nodes": 12, "n_metrics": 3, "steps": 2, "partitions": 3},
}  # fmt: skip


def positive(value: object) -> bool:
    return isinstance(value, int | float) and value > 0


@pytest.mark.integration
@pytest.mark.slow
def test_quick_run_reports_every_benchmark(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "reports" / "bench.json"
    run(list(BENCHMARKS), TINY, out, quick=True)
    report = orjson.loads(out.read_bytes())

    assert set(BENCHMARKS) <= set(report)
    assert report["meta"]["quick"] is True

    ingest = report["ingest"]
    assert ingest["samples"] == 20 * 5 * 2
    assert positive(ingest["floor"]["samples_per_s"])
    for kind in ("json", "json_groups", "json_split", "remote_write"):
        if ingest[kind] is not None:  # remote_write only where the route exists
            assert positive(ingest[kind]["samples_per_s"])
            assert positive(ingest[kind]["ratio_vs_floor"])
            assert ingest[kind]["client_cpu_s_per_1m"] >= 0

    scoring = report["scoring"]
    assert positive(scoring["river"]["samples_per_cpu_s"])
    assert set(scoring["settings"]) == {"ewma_z", "ensemble"}
    for figures in scoring["settings"].values():
        assert positive(figures["samples_per_cpu_s"])
        assert positive(figures["ratio_vs_river"])

    scale_out = report["scale_out"]
    assert scale_out["samples"] == 12 * 3 * 2
    assert positive(scale_out["worker"]["samples_per_s"]) and positive(scale_out["ratio"])

    memory = report["memory"]
    assert [(r["nodes"], r["metrics"]) for r in memory["rows"]] == [(10, 3), (40, 3)] * 2
    for row in memory["rows"]:
        assert row["series"] == row["nodes"] * row["metrics"]
        assert positive(row["bytes_per_series_joblib"])
        assert positive(row["bytes_per_series_memory"])

    for key in ("healthz", "risk_top50", "node_risk"):
        assert positive(report["queries"][key]["p50_ms"])
        assert report["queries"][key]["p99_ms"] >= report["queries"][key]["p50_ms"]

    training = report["training"]["rows"]
    assert [r["n_jobs"] for r in training] == [-1, -1, 1]  # the smallest again on one core
    for r in training:
        assert positive(r["cpu_s"]) and positive(r["peak_rss_mib"])
        assert set(r["stage_wall_s"]) == {"features", "fit", "evaluate"}
    # About as many feature rows as asked for (nodes x steps, a few maintenance gaps).
    assert 0.8 * 3_000 <= training[0]["feature_rows"] <= 1.2 * 3_000

    runs = report["end_to_end"]["runs"]
    assert [(r["nodes"], r["shape"]) for r in runs] == [(10, "per-node")]
    assert len(runs[0]["lag_s"]) == 2
    assert runs[0]["samples_stored"] == runs[0]["samples_sent"] == 10 * 3 * 2  # none dropped
    assert positive(runs[0]["peak_rss_mib"])

    print_table(report)
    printed = capsys.readouterr().out
    assert len(table(report)) > 10
    assert "x river" in printed and "x floor" in printed
