"""The ``predictor`` command line: the same verbs as the make targets."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import httpx
import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from predictor.config import Settings

app = typer.Typer(help="Failure prediction for server fleets.", no_args_is_help=True)
models_app = typer.Typer(help="Model versions: list, promote, roll back.", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console()

DbOption = Annotated[Path | None, typer.Option(help="SQLite store (PREDICTOR_DB)")]
ModelsOption = Annotated[Path | None, typer.Option(help="Model directory (PREDICTOR_MODELS_DIR)")]


def _settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the command line's options on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (PREDICTOR_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (PREDICTOR_PORT)")] = None,
    db: DbOption = None,
    models_dir: ModelsOption = None,
) -> None:
    """Run the API and the scorer."""
    import uvicorn

    from predictor.api import create_app

    settings = _settings(host=host, port=port, db=db, models_dir=models_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning")


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
    from predictor.store import Store

    store = Store(settings.db)
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

    settings = _settings(db=db, models_dir=models_dir)
    with console.status("loading history"):
        samples, events, drains = load_history(data, settings)
    with console.status(f"training on {len(samples):,} samples"):
        report = train_and_register(
            samples=samples, events=events, drains=drains, settings=settings
        )
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
    with console.status(f"simulating {nodes} nodes for {days} days"):
        fleet = run_simulation(spec)
    write_dataset(fleet, out, fmt=fmt)  # type: ignore[arg-type]
    failures = fleet.events[fleet.events["kind"] == "failure"]
    console.print(f"wrote {len(fleet.samples):,} samples and {len(failures)} failures to {out}")


@models_app.command("list")
def models_list(models_dir: ModelsOption = None) -> None:
    """Stored model versions, the current one marked."""
    from predictor.training import ModelRegistry

    registry = ModelRegistry(_settings(models_dir=models_dir).models_dir)
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

    ModelRegistry(_settings(models_dir=models_dir).models_dir).promote(version)
    console.print(f"current model: {version}")


@models_app.command("rollback")
def models_rollback(models_dir: ModelsOption = None) -> None:
    """Return to the previously promoted model."""
    from predictor.training import ModelRegistry

    version = ModelRegistry(_settings(models_dir=models_dir).models_dir).rollback()
    console.print(f"current model: {version}")


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
) -> None:
    """Print the fleet's riskiest nodes."""
    rows = httpx.get(f"{url}/v1/risk", params={"top": top}, timeout=10).raise_for_status().json()
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
