"""The ``predictor`` command line: the same verbs as the make targets."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import pandas as pd
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from predictor.config import Settings

app = typer.Typer(help="Failure prediction for server fleets.", no_args_is_help=True)
models_app = typer.Typer(help="Model versions: list, promote, roll back.", no_args_is_help=True)
app.add_typer(models_app, name="models")
keys_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
nab_app = typer.Typer(
    help="NAB-format corpora: run the service's scoring over one, score results.",
    no_args_is_help=True,
)
app.add_typer(nab_app, name="nab")
console = Console()

DbOption = Annotated[
    Path | None,
    typer.Option(help="SQLite store file (PREDICTOR_DB); wins over PREDICTOR_DATABASE_URL"),
]
ModelsOption = Annotated[Path | None, typer.Option(help="Model directory (PREDICTOR_MODELS_DIR)")]


def _progress(*, disable: bool = False) -> Progress:
    """A progress bar on the command's console (on a non-terminal it prints the end state)."""
    return Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
        TimeElapsedColumn(), console=console, disable=disable,
    )  # fmt: skip


def _settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the command line's options on top."""
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    if overrides.get("db") is not None:  # an explicit --db names the SQLite file to use
        settings = settings.model_copy(update={"database_url": None})
    return settings


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (PREDICTOR_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (PREDICTOR_PORT)")] = None,
    db: DbOption = None,
    models_dir: ModelsOption = None,
    role: Annotated[
        str | None,
        typer.Option(help="all (API + scorer), api, scorer or worker (PREDICTOR_ROLE)"),
    ] = None,
) -> None:
    """Run the API and the scorer (or, scaled out, an API replica or a scorer worker)."""
    import uvicorn

    from predictor.api import create_app
    from predictor.logging_setup import configure_logging

    settings = _settings(host=host, port=port, db=db, models_dir=models_dir, role=role)
    configure_logging(json_lines=settings.log_json)
    if settings.role == "worker":
        from predictor.scoring.worker import run_worker

        run_worker(settings)
        return
    if settings.role == "scorer":
        from predictor.service import run_scorer

        run_scorer(settings)
        return
    logging.getLogger("predictor.cli").info(
        "serving on %s:%d", settings.host, settings.port,
        extra={"host": settings.host, "port": settings.port, "db": str(settings.db)},
    )  # fmt: skip
    # log_config=None: uvicorn's loggers propagate to the one root handler (JSON or text).
    common: dict[str, Any] = dict(
        host=settings.host, port=settings.port, log_level="warning", log_config=None
    )
    if settings.api_workers > 1:
        # Each worker process builds its app from the environment: hand this command's
        # options on, so that every worker serves the same store.
        os.environ.update(
            PREDICTOR_ROLE=settings.role, PREDICTOR_DB=str(settings.db),
            PREDICTOR_MODELS_DIR=str(settings.models_dir),
        )  # fmt: skip
        if settings.database_url is None:
            os.environ.pop("PREDICTOR_DATABASE_URL", None)
        uvicorn.run(
            "predictor.api.app:create_worker_app", factory=True,
            workers=settings.api_workers, **common,
        )  # fmt: skip
        return
    uvicorn.run(create_app(settings), **common)


def load_history(
    data: Path | None, settings: Settings
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Samples, events and our own executed drains, from a dataset path or the store."""
    if data is not None:
        from predictor.simulate import read_dataset

        if data.is_dir():
            fleet = read_dataset(data)
            return fleet.samples, fleet.events, pd.DataFrame(columns=["node", "ts"])
        reader = pd.read_parquet if data.suffix == ".parquet" else pd.read_csv
        return (
            reader(data),
            pd.DataFrame(columns=["node", "ts", "kind"]),
            pd.DataFrame(columns=["node", "ts"]),
        )
    from predictor.store import open_store

    store = open_store(settings)
    try:
        actions = pd.DataFrame(store.actions(limit=1_000_000))
        drains = (
            actions[actions["action"].isin(["drain", "failover"]) & actions["executed"]][
                ["node", "ts"]
            ]
            if len(actions)
            else pd.DataFrame(columns=["node", "ts"])
        )
        return store.samples_frame(), store.events_frame(), drains
    finally:
        store.close()


@app.command()
def train(
    data: Annotated[
        Path | None, typer.Option(help="Dataset dir or samples CSV/Parquet; default: the store")
    ] = None,
    db: DbOption = None,
    models_dir: ModelsOption = None,
) -> None:
    """Train a batch model on history and promote it."""
    from predictor.training import train_and_register
    from predictor.training.train import TRAIN_STAGES

    settings = _settings(db=db, models_dir=models_dir)
    with _progress() as bar:
        # One step per stage: loading the history, then each stage of training.
        task = bar.add_task("loading history", total=1 + len(TRAIN_STAGES))
        samples, events, drains = load_history(data, settings)

        def stage(name: str) -> None:
            bar.update(task, advance=1, description=f"{name} ({len(samples):,} samples)")

        report = train_and_register(
            samples=samples, events=events, drains=drains, settings=settings, progress=stage
        )
        bar.update(task, advance=1, description="trained")
    console.print_json(json.dumps(report))


@app.command()
def retrain(
    days: Annotated[float, typer.Option(help="Train on the latest N days of the store")] = 7.0,
    data: Annotated[Path | None, typer.Option(help="Dataset instead of the store")] = None,
    db: DbOption = None,
    models_dir: ModelsOption = None,
) -> None:
    """Train on the latest window; promote only if no worse than the current model."""
    from predictor.training import train_and_register

    settings = _settings(db=db, models_dir=models_dir)
    samples, events, drains = load_history(data, settings)
    if len(samples):
        samples = samples[samples["ts"] >= samples["ts"].max() - days * 86400]
    report = train_and_register(
        samples=samples, events=events, drains=drains, settings=settings, promote="if_no_worse"
    )
    console.print_json(json.dumps(report))


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Output directory")] = Path("data/sim"),
    nodes: int = 20,
    days: float = 2.0,
    step: Annotated[float, typer.Option(help="Seconds between samples")] = 60.0,
    seed: int = 1,
    naming: Annotated[str, typer.Option(help="simple | prometheus")] = "simple",
    fmt: Annotated[str, typer.Option("--format", help="csv | parquet")] = "csv",
) -> None:
    """Write a labelled simulated fleet (samples, events, nodes) to OUT."""
    from predictor.simulate import FleetSpec, write_dataset
    from predictor.simulate import simulate as run_simulation

    spec = FleetSpec(nodes=nodes, duration_s=days * 86400, step_s=step, seed=seed, naming=naming)  # type: ignore[arg-type]
    with _progress() as bar:
        task = bar.add_task(f"simulating {nodes} nodes for {days} days", total=1.0)
        fleet = run_simulation(spec, progress=lambda done: bar.update(task, completed=done))
        bar.update(task, description=f"writing {out}")
        write_dataset(fleet, out, fmt=fmt)  # type: ignore[arg-type]
    failures = fleet.events[fleet.events["kind"] == "failure"]
    console.print(f"wrote {len(fleet.samples):,} samples and {len(failures)} failures to {out}")


@app.command()
def evaluate(
    data: Annotated[
        Path | None, typer.Option(help="Labelled dataset dir; default: simulated fleets")
    ] = None,
    train_data: Annotated[
        Path | None, typer.Option(help="Dataset to train on; default: the first half of --data")
    ] = None,
    nodes: Annotated[int, typer.Option(help="Nodes per simulated fleet")] = 24,
    days: Annotated[float, typer.Option(help="Days per simulated fleet")] = 2.0,
    fleets: Annotated[
        int, typer.Option(min=1, help="Simulated evaluation fleets per naming, pooled too")
    ] = 1,
    step: Annotated[float, typer.Option(help="Seconds between simulated samples")] = 60.0,
    failure_rate: Annotated[float, typer.Option(help="Simulated failures per node-day")] = 0.4,
    nab_dir: Annotated[
        Path, typer.Option(help="NAB corpus (skipped with a note if absent)")
    ] = Path("../shared/datasets/nab-dev"),
    out: Annotated[Path, typer.Option(help="Report directory")] = Path("reports"),
) -> None:
    """Fleet evaluation against baselines, NAB, and reports/evaluation.md with plots."""
    from predictor.evaluation.run import run_evaluation

    figures = run_evaluation(
        out_dir=out, data=data, train_data=train_data, nodes=nodes, days=days, fleets=fleets,
        step_s=step, failure_rate=failure_rate, nab_dir=nab_dir, settings=_settings(),
        console=console,
    )  # fmt: skip
    console.print(f"wrote {out / 'evaluation.md'} in {figures['run']['seconds']:.0f} s")


@app.command()
def replay(
    data: Annotated[
        Path, typer.Option(help="Labelled dataset dir (as `predictor simulate` writes)")
    ],
    models_dir: ModelsOption = None,
    model: Annotated[
        bool, typer.Option(help="Use the serving batch model; --no-model: online detectors only")
    ] = True,
    match_window: Annotated[
        float, typer.Option(help="Seconds before a failure in which a drain counts for it")
    ] = 6 * 3600.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")] = False,
) -> None:
    """Replay a dataset through the service's scorer and a dry-run policy; score the drains."""
    from predictor.evaluation.fleet import drain_decisions, score_drains
    from predictor.evaluation.fleet import replay as run_replay
    from predictor.simulate import read_dataset
    from predictor.training import ModelRegistry

    settings = _settings(models_dir=models_dir)
    fleet = read_dataset(data)
    loaded = ModelRegistry.from_settings(settings).load_serving()[0] if model else None
    version = loaded[1]["version"] if loaded else None
    with _progress(disable=as_json) as bar:  # JSON alone on stdout
        task = bar.add_task(f"replaying {len(fleet.samples):,} samples", total=1.0)
        result = run_replay(
            samples=fleet.samples, nodes=fleet.nodes, settings=settings,
            model=loaded[0] if loaded else None,
            progress=lambda done: bar.update(task, completed=done),
        )  # fmt: skip
    summary = score_drains(
        drains=drain_decisions(result.actions), events=fleet.events, samples=fleet.samples,
        match_window_s=match_window,
    )  # fmt: skip
    summary["model"] = version
    if as_json:
        console.print_json(json.dumps(summary))
        return
    console.print(f"model: {version or 'none (online detectors only)'}; policy in dry-run")
    console.print(drain_summary_table(summary))


@nab_app.command("run")
def nab_run(
    data: Annotated[Path, typer.Option(help="The corpus's data/ directory")],
    windows: Annotated[Path, typer.Option(help="labels/combined_windows.json")],
    out: Annotated[Path, typer.Option(help="Results directory (NAB's results/ layout)")],
    name: Annotated[str, typer.Option(help="Detector name in the results layout")] = "predictor",
    detector: Annotated[str, typer.Option(help="Online detector the engine runs")] = "ensemble",
) -> None:
    """Stream every series through the service's scoring engine, all series as one fleet."""
    from predictor.evaluation.nab import default_score_fn, load_windows, run_corpus

    score_fn = default_score_fn(list(load_windows(windows)), detector)
    path = run_corpus(
        data_dir=data, windows_file=windows, out_dir=out, name=name, score_fn=score_fn
    )
    typer.echo(f"results: {path}")


@nab_app.command("score")
def nab_score(
    data: Annotated[Path, typer.Option(help="The corpus's data/ directory")],
    windows: Annotated[Path, typer.Option(help="labels/combined_windows.json")],
    results: Annotated[Path, typer.Option(help="Results directory (NAB's results/ layout)")],
    detectors: Annotated[str, typer.Option(help="Comma-separated detector names")],
    profiles: Annotated[Path | None, typer.Option(help="NAB profiles.json")] = None,
) -> None:
    """Score detectors' results with NAB's method; print the normalised scores."""
    from predictor.evaluation.nab import nab_table, score_results

    table = {
        d: score_results(
            data_dir=data,
            windows_file=windows,
            results_dir=results,
            detector=d,
            profiles_file=profiles,
        )  # fmt: skip
        for d in detectors.split(",")
        if d
    }
    typer.echo(nab_table(table))


def drain_summary_table(summary: dict[str, Any]) -> Table:
    """Failures caught by an earlier drain, lead times and false drains, per failure mode."""

    def minutes(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f} min"

    def share(value: float) -> str:
        return "-" if value != value else f"{value:.0%}"  # NaN: no failures to catch

    table = Table("failure mode", "failures", "recall", "median lead", title="drains vs failures")
    for mode, row in sorted(summary["per_mode"].items()):
        table.add_row(
            mode, str(row["failures"]), share(row["recall"]), minutes(row["median_lead_min"])
        )
    recall = summary["caught"] / summary["failures"] if summary["failures"] else float("nan")
    table.add_section()
    table.add_row(
        "all", str(summary["failures"]), share(recall), minutes(summary["median_lead_min"])
    )
    table.caption = (
        f"{summary['drains']} drains, {summary['false_drains']} false"
        f" ({summary['false_drains_per_1000_node_days']:.1f} per 1000 node-days);"
        f" p10 lead {minutes(summary['p10_lead_min'])}"
    )
    return table


@models_app.command("list")
def models_list(models_dir: ModelsOption = None) -> None:
    """Stored model versions, the current one marked."""
    from predictor.training import ModelRegistry

    registry = ModelRegistry.from_settings(_settings(models_dir=models_dir))
    current = registry.current()
    table = Table("", "version", "rows", "metrics", "classifier", "avg precision")
    for m in registry.versions():
        ev = m.get("evaluation", {})
        ap = ev.get("average_precision")
        table.add_row(
            "*" if m["version"] == current else "", m["version"], str(m.get("rows")),
            str(len(m["metrics"])), str(m.get("has_classifier")), f"{ap:.3f}" if ap else "-",
        )  # fmt: skip
    console.print(table)


@models_app.command("promote")
def models_promote(version: str, models_dir: ModelsOption = None) -> None:
    """Make VERSION the current model (the service picks it up on restart)."""
    from predictor.training import ModelRegistry

    ModelRegistry.from_settings(_settings(models_dir=models_dir)).promote(version)
    console.print(f"current model: {version}")


@models_app.command("rollback")
def models_rollback(models_dir: ModelsOption = None) -> None:
    """Return to the previously promoted model."""
    from predictor.training import ModelRegistry

    version = ModelRegistry.from_settings(_settings(models_dir=models_dir)).rollback()
    console.print(f"current model: {version}")


def _stamp(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


@keys_app.command("create")
def keys_create(
    scope: Annotated[str, typer.Option(help="ingest | read | admin (admin may do all)")],
    name: Annotated[str, typer.Option(help="What the key is for, e.g. the client's name")] = "",
    db: DbOption = None,
) -> None:
    """Create an API key and print it: the only time it is shown (only its hash is kept)."""
    from predictor.auth import SCOPES, create_key
    from predictor.store import open_store

    if scope not in SCOPES:
        raise typer.BadParameter(f"one of {', '.join(SCOPES)}", param_hint="--scope")
    store = open_store(_settings(db=db))
    try:
        key, record = create_key(store=store, scope=scope, name=name)  # type: ignore[arg-type]
    finally:
        store.close()
    console.print(
        f"created key {record['id']} ({record['name']}, scope {scope}); store it now,"
        " it is not shown again:"
    )
    print(key)  # plain print: no wrapping or markup, so it can be copied or piped


@keys_app.command("list")
def keys_list(db: DbOption = None) -> None:
    """Every API key: id, name, scope, created, revoked (never the key itself)."""
    from predictor.auth import list_keys
    from predictor.store import open_store

    store = open_store(_settings(db=db))
    try:
        keys = list_keys(store=store)
    finally:
        store.close()
    table = Table("id", "name", "scope", "created (UTC)", "revoked (UTC)")
    for k in keys:
        table.add_row(
            str(k["id"]), k["name"], k["scope"], _stamp(k["created"]), _stamp(k["revoked"])
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(metavar="ID")], db: DbOption = None) -> None:
    """Revoke key ID; a running service refuses it from its next request on."""
    from predictor.auth import revoke_key
    from predictor.store import open_store

    store = open_store(_settings(db=db))
    try:
        revoke_key(store=store, key_id=key_id)
    except LookupError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    finally:
        store.close()
    console.print(f"revoked key {key_id}")


def risk_table(rows: list[dict[str, Any]], title: str = "riskiest nodes") -> Table:
    table = Table("node", "risk", "trend", "state", "why", title=title)
    for r in rows:
        colour = "red" if r["risk"] >= 0.8 else "yellow" if r["risk"] >= 0.4 else "green"
        why = ", ".join(f"{w['metric']} {w['score']:.2f}" for w in r["why"][:3])
        arrow = "↑" if r["trend"] > 0.05 else "↓" if r["trend"] < -0.05 else "→"
        table.add_row(r["node"], f"[{colour}]{r['risk']:.2f}[/]", arrow, r["state"], why)
    return table


@app.command()
def status(
    url: Annotated[str, typer.Option(help="Service base URL")] = "http://127.0.0.1:8000",
    top: int = 10,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="PREDICTOR_API_KEY", help="A read key; in dev, the dev key if unset"),
    ] = None,
) -> None:
    """Print the fleet's riskiest nodes."""
    settings = _settings()
    key = api_key or (settings.dev_api_key if settings.env == "dev" else None)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.get(f"{url}/v1/risk", params={"top": top}, headers=headers, timeout=10)
    if response.status_code in (401, 403):
        console.print(f"[red]{response.status_code}: {response.json().get('detail')}[/]")
        console.print("pass a read key with --api-key or PREDICTOR_API_KEY")
        raise typer.Exit(1)
    rows = response.raise_for_status().json()
    console.print(risk_table(rows))


@app.command()
def demo(
    nodes: int = 20,
    speed: Annotated[float, typer.Option(help="Simulated seconds per wall second")] = 600.0,
    seed: Annotated[
        int, typer.Option(help="Fleet seed (the bundled model was trained on another)")
    ] = 7,
    port: int = 8000,
    db: DbOption = None,
    models_dir: ModelsOption = None,
    duration: Annotated[float, typer.Option(help="Wall seconds to run (0 = until Ctrl-C)")] = 0.0,
) -> None:
    """Serve, stream a simulated fleet into the service and show risk and decisions live."""
    from predictor.demo import run_demo

    settings = _settings(port=port, db=db, models_dir=models_dir)
    run_demo(
        settings=settings, nodes=nodes, speed=speed, seed=seed, duration_s=duration, console=console
    )


if __name__ == "__main__":
    app()
