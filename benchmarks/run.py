"""Run the benchmarks, print a table of ratios, write ``reports/bench.json``.

Every figure is a ratio against a baseline measured in the same run (the machine may be
shared or loaded; ratios survive that better than absolute figures, which are printed
for context)::

    python -m benchmarks.run            # the full suite (about 15 minutes on 2 cores)
    python -m benchmarks.run --quick    # small workloads, a minute or two
    python -m benchmarks.run --only scoring,memory
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from benchmarks.ingest import bench_ingest
from benchmarks.scale_out import bench_scale_out
from benchmarks.scoring import bench_memory, bench_scoring
from benchmarks.service import bench_end_to_end, bench_queries
from benchmarks.training import bench_training

Profile = dict[str, dict[str, Any]]

FULL: Profile = {
    "ingest": {"n_nodes": 10_000, "n_metrics": 20, "n_steps": 3},
    "scoring": {"n_nodes": 10_000, "n_metrics": 20, "warm_steps": 2, "steps": 4},
    "memory": {"sizes": ((1_000, 20), (10_000, 20), (100_000, 5))},
    "queries": {"n_nodes": 10_000, "n_metrics": 20, "n_steps": 3, "requests": 300},
    "training": {"sizes": (1_000_000, 10_000_000)},
    "end_to_end": {"ladder": (2_000, 5_000, 10_000, 20_000), "big": 100_000, "big_intervals": 3},
    "scale_out": {"n_nodes": 5_000, "n_metrics": 20, "steps": 4},
}
QUICK: Profile = {
    "ingest": {"n_nodes": 500, "n_metrics": 20, "n_steps": 2},
    "scoring": {"n_nodes": 1_000, "n_metrics": 20, "warm_steps": 1, "steps": 2},
    "memory": {"sizes": ((100, 20), (1_000, 20), (5_000, 20))},
    "queries": {"n_nodes": 1_000, "n_metrics": 20, "n_steps": 2, "requests": 100},
    "training": {"sizes": (20_000, 100_000)},
    "end_to_end": {
        "ladder": (200, 1_000),
        "big": 5_000,
        "intervals": 2,
        "big_intervals": 1,
        "interval_s": 2.0,
        "drain_timeout_s": 60.0,
    },  # fmt: skip
    "scale_out": {"n_nodes": 500, "n_metrics": 20, "steps": 3},
}
NEEDS_WORKDIR = {"ingest", "memory", "queries", "end_to_end", "scale_out"}
BENCHMARKS: dict[str, Callable[..., dict[str, Any]]] = {
    "ingest": bench_ingest,
    "scoring": bench_scoring,
    "memory": bench_memory,
    "queries": bench_queries,
    "training": bench_training,
    "end_to_end": bench_end_to_end,
    "scale_out": bench_scale_out,
}


def run(names: list[str], profile: Profile, out: Path, *, quick: bool) -> dict[str, Any]:
    """Run the named benchmarks with ``profile``'s sizes; write and return the report."""
    report: dict[str, Any] = {
        "meta": {
            "quick": quick,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cpus": os.cpu_count(),
            "load_average_at_start": list(os.getloadavg()),
            "python": platform.python_version(),
            "command": " ".join(["python -m benchmarks.run", *sys.argv[1:]]),
        }
    }
    with tempfile.TemporaryDirectory(prefix="predictor-bench-") as tmp:
        for name in names:
            kwargs = dict(profile.get(name, {}))
            if name in NEEDS_WORKDIR:
                kwargs["workdir"] = Path(tmp) / name
            started = time.perf_counter()
            print(f"running {name} ...", file=sys.stderr, flush=True)
            report[name] = BENCHMARKS[name](**kwargs)
            report[name]["wall_s"] = time.perf_counter() - started
            report["meta"]["load_average_at_end"] = list(os.getloadavg())
            _write(out, report)  # after each benchmark: a long run keeps what it measured
    _write(out, report)
    return report


def _write(out: Path, report: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))


def table(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Rows of (figure, value, ratio against its baseline, goal)."""
    rows: list[tuple[str, str, str, str]] = []
    if ing := report.get("ingest"):
        rows.append(
            ("ingest floor: store.append_samples, 100k/txn",
             f"{ing['floor']['samples_per_s']:,.0f} samples/s", "1 (baseline)", "")
        )  # fmt: skip
        labels = {"json": "json", "json_groups": "json per-node groups",
                  "json_split": "json (api process + scorer process)",
                  "json_split_2": "json (2 api processes + scorer process)",
                  "remote_write": "remote_write"}  # fmt: skip
        for kind in labels:
            if fig := ing.get(kind):
                rows.append(
                    (f"ingest {labels[kind]}, HTTP, 1k samples/request, to commit",
                     f"{fig['samples_per_s']:,.0f} samples/s (client "
                     f"{fig['client_cpu_s_per_1m']:.2f} cpu-s per 1M)",
                     f"{fig['ratio_vs_floor']:.3f} x floor",
                     ">= 0.6" if kind == "remote_write" else ">= 0.6 and >= 300k/s")
                )  # fmt: skip
    if sc := report.get("scoring"):
        rows.append(
            ("scoring river HST (1 sample at a time)",
             f"{sc['river']['samples_per_cpu_s']:,.0f} samples/cpu-s", "1 (baseline)", "")
        )  # fmt: skip
        for setting, fig in sc["settings"].items():
            rows.append(
                (f"scoring engine [{setting}] {sc['nodes']:,}x{sc['metrics']}",
                 f"{fig['samples_per_cpu_s']:,.0f} samples/cpu-s "
                 f"({fig['samples_per_wall_s']:,.0f}/s wall)",
                 f"{fig['ratio_vs_river']:.1f} x river", ">= 50x and >= 1M/s")
            )  # fmt: skip
    if mem := report.get("memory"):
        rows.append(
            ("memory river HST pipeline (pickle)",
             f"{mem['river_bytes_per_series_pickle']:,.0f} B/series", "1 (baseline)", "")
        )  # fmt: skip
        for row in mem["rows"]:
            rows.append(
                (f"memory [{row['detectors']}] {row['nodes']:,}x{row['metrics']}",
                 f"{row['bytes_per_series_joblib']:,.0f} B/series (joblib), "
                 f"{row['bytes_per_series_memory']:,.0f} in RAM",
                 f"{row['ratio_vs_river']:.3f} x river", "<= 4096 B, linear")
            )  # fmt: skip
    if q := report.get("queries"):
        rows.append(
            ("query GET /healthz p50/p99",
             f"{q['healthz']['p50_ms']:.2f} / {q['healthz']['p99_ms']:.2f} ms", "1 (baseline)", "")
        )  # fmt: skip
        for key, label in (("risk_top50", "GET /v1/risk?top=50"),
                           ("node_risk", "GET /v1/nodes/{node}/risk")):  # fmt: skip
            fig = q[key]
            rows.append(
                (f"query {label} at {q['nodes']:,} nodes p50/p99",
                 f"{fig['p50_ms']:.2f} / {fig['p99_ms']:.2f} ms",
                 f"{fig['p99_ratio_vs_healthz']:.1f} x healthz p99", "p99 <= 10 ms")
            )  # fmt: skip
    if tr := report.get("training"):
        for row in tr["rows"]:
            ap = row["holdout_average_precision"]
            cores = "all cores" if row["n_jobs"] == -1 else f"n_jobs={row['n_jobs']}"
            rows.append(
                (f"training train() on {row['feature_rows']:,} feature rows "
                 f"({row['nodes']:,} nodes), {cores}",
                 f"{row['wall_s']:.1f} s wall, {row['cpu_s']:.1f} cpu-s "
                 f"({row['rows_per_s']:,.0f} rows/s); peak RSS {row['peak_rss_mib']:,.0f} MiB; "
                 f"holdout AP {'-' if ap is None else f'{ap:.3f}'}",
                 f"{row['per_row_ratio_vs_smallest']:.2f} x smallest, per row (cpu); "
                 f"{row['per_row_wall_ratio_vs_smallest']:.2f} (wall)", "~1 (linear)")
            )  # fmt: skip
    if e2e := report.get("end_to_end"):
        scoring = (report.get("scoring") or {}).get("settings", {}).get("ewma_z", {})
        for run_ in e2e["runs"]:
            lags = ", ".join("late" if x is None else f"{x:.1f}" for x in run_["lag_s"])
            final = run_["final_lag_s"]
            ratio = ""
            if scoring.get("samples_per_cpu_s"):
                ratio = f"{run_['offered_samples_per_s'] / scoring['samples_per_cpu_s']:.2f}"
                ratio += " x engine rate offered"
            rows.append(
                (f"end to end {run_['nodes']:,}x{e2e['metrics']} every {run_['interval_s']:g}s"
                 f" ({run_['shape']} bodies)",
                 f"{'kept up' if run_['sustained'] else 'fell behind'}; lag s [{lags}]; "
                 f"last scored {'never' if final is None else f'{final:.1f}'} s after due; "
                 f"stored {run_['samples_stored']:,}/{run_['samples_sent']:,}; "
                 f"peak RSS {run_['peak_rss_mib']:,.0f} MiB",
                 ratio, "lag < interval")
            )  # fmt: skip
        rows.append(
            ("end to end: largest fleet kept up",
             f"{e2e['largest_sustained_nodes']:,} nodes "
             f"({e2e['largest_sustained_samples_per_s']:,.0f} samples/s)", "", ">= 100k nodes")
        )  # fmt: skip
    if so := report.get("scale_out"):
        rows.append(
            (f"one scorer worker: stream -> PostgreSQL -> score ({so['samples']:,} samples)",
             f"{so['worker']['samples_per_s']:,.0f} samples/s",
             f"{so['ratio']:.2f} x embedded scorer (SQLite)", "")
        )  # fmt: skip
    return rows


def print_table(report: dict[str, Any]) -> None:
    rows = [("figure", "value", "ratio", "goal"), *table(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small workloads")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated names")
    parser.add_argument("--out", type=Path, default=Path("reports/bench.json"))
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmarks {sorted(unknown)}; known: {list(BENCHMARKS)}")
    report = run(names, QUICK if args.quick else FULL, args.out, quick=args.quick)
    print_table(report)
    print(f"\nwritten: {args.out}  (command: {report['meta']['command']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
