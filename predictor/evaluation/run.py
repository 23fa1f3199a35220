"""``predictor evaluate``: fleet evaluation against baselines, NAB, and the report.

Fleets. Without ``data`` the run simulates, for each naming (``simple`` and
``prometheus``), a *training* fleet from :data:`TRAINING_SEEDS` and an *evaluation* fleet
from :data:`EVALUATION_SEEDS` (or several: ``fleets``, seeds 100 apart). The evaluation
seeds are kept for this report only: never tune anything on them (develop on other seeds,
e.g. ``predictor simulate --seed 1``). The model of each case is trained on the fleet with
the same naming as the one evaluated, because in production the names come from the
operator's own store. With ``data`` (a labelled dataset dir) the model trains on the
earlier ``train_fraction`` of its time span (or on ``train_data`` when given) and is
evaluated on the rest.

Detectors, each turned into drain decisions and scored by
:func:`~predictor.evaluation.fleet.score_drains` on the same evaluation fleet:

- ``predictor``: the batch model + the configured online detectors, through the service's
  scorer and the dry-run policy (:func:`~predictor.evaluation.fleet.replay`);
- ``static rules``: Prometheus-style threshold rules (:mod:`predictor.evaluation.rules`);
- ``river HST``: river HalfSpaceTrees alone (the only online detector, no evidence
  detectors, no batch model), same policy;
- ``IsolationForest``: the batch model trained without labels (no classifier) alone, no
  online or evidence detectors, same policy.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from predictor.config import Settings
from predictor.evaluation.fleet import drain_decisions, replay, score_drains
from predictor.evaluation.rules import DEFAULT_RULES, rule_drains
from predictor.simulate import FleetSpec, simulate
from predictor.training.model import BatchModel
from predictor.training.train import train

# Fixed seeds: training fleets for development, evaluation fleets for this report only.
TRAINING_SEEDS = {"simple": 1101, "prometheus": 1102}
EVALUATION_SEEDS = {"simple": 9001, "prometheus": 9002}
NAMINGS = ("simple", "prometheus")
# Above a real fleet's rate, so that a bounded run still sees every failure mode a few
# times; false drains are counted per node-day, so they stay comparable.
FAILURE_RATE = 0.4
DETECTORS = ("predictor", "static rules", "river HST", "IsolationForest")

# Published normalised NAB scores on exactly the nab-dev subset (standard, low FP, low FN).
PUBLISHED_NAB: dict[str, tuple[float | None, float | None, float | None]] = {
    "numenta (HTM)": (73.56, 68.36, 77.04),
    "contextOSE (CAD OSE)": (71.72, 68.15, 75.15),
    "ARTime": (71.05, 62.38, 76.03),
    "knncad": (60.96, 51.05, 65.97),
    "randomCutForest": (56.71, 47.56, 63.14),
    "windowedGaussian": (35.02, 16.66, 43.35),
    "river HalfSpaceTrees": (9.76, None, None),
}
REFERENCE_DETECTORS = ("numenta", "ARTime")
NAB_DETECTOR = "ensemble"


@dataclass
class Fleet:
    """Labelled fleet data: samples, events and (optionally) the node registry."""

    samples: pd.DataFrame
    events: pd.DataFrame
    nodes: pd.DataFrame | None = None
    label: str = ""


@dataclass
class CaseResult:
    """One evaluation fleet scored for every detector."""

    name: str
    description: str
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_rule: dict[str, dict[str, Any]] = field(default_factory=dict)
    drains: dict[str, pd.DataFrame] = field(default_factory=dict)
    risk: pd.DataFrame | None = None  # the predictor's risk over the evaluation fleet
    events: pd.DataFrame | None = None
    enter_threshold: float = 0.8


class Stages:
    """A rich progress bar over the whole run plus one for the current stage."""

    def __init__(self, progress: Progress | None, total: float):
        self.progress = progress
        self.done = 0.0
        self.overall = progress.add_task("evaluation", total=total) if progress else None
        self.seconds: dict[str, float] = {}  # wall time of each stage, for the report

    @contextmanager
    def stage(self, name: str, weight: float) -> Iterator[Callable[[float], None]]:
        """Run a stage; the yielded callback reports its own progress in [0, 1]."""
        progress, overall = self.progress, self.overall
        task = progress.add_task(f"  {name}", total=1.0) if progress else None

        def report(fraction: float) -> None:
            if progress is not None and task is not None and overall is not None:
                fraction = min(max(fraction, 0.0), 1.0)
                progress.update(task, completed=fraction)
                progress.update(overall, completed=self.done + weight * fraction)

        started = time.perf_counter()
        try:
            yield report
        finally:
            report(1.0)
            self.done += weight
            self.seconds[name] = round(time.perf_counter() - started, 1)
            if progress is not None and task is not None:
                progress.remove_task(task)


def load_fleet(directory: Path) -> Fleet:
    """A labelled dataset dir: ``samples.parquet|csv``, ``events.csv``, optional ``nodes.json``.

    ``events.csv`` needs ``node, ts, kind``; ``reason`` and ``mode`` are optional (a
    missing mode counts as ``unknown``).
    """
    parquet, csv = directory / "samples.parquet", directory / "samples.csv"
    if parquet.exists():
        samples = pd.read_parquet(parquet)
    elif csv.exists():
        samples = pd.read_csv(csv)
    else:
        raise FileNotFoundError(f"no samples.parquet or samples.csv in {directory}")
    samples = samples[["node", "metric", "ts", "value"]].astype(
        {"node": "str", "metric": "str", "ts": "float64", "value": "float64"}
    )
    events_path = directory / "events.csv"
    events = (
        pd.read_csv(events_path)
        if events_path.exists()
        else pd.DataFrame(columns=["node", "ts", "kind"])
    )
    events = events.astype({"node": "str", "ts": "float64", "kind": "str"})
    if "mode" not in events:
        events["mode"] = "unknown"
    events["mode"] = events["mode"].fillna("unknown").astype(str)
    nodes = None
    nodes_path = directory / "nodes.json"
    if nodes_path.exists():
        nodes = pd.DataFrame(json.loads(nodes_path.read_text()))
    return Fleet(samples, events, nodes, label=str(directory))


def split_in_time(fleet: Fleet, train_fraction: float) -> tuple[Fleet, Fleet]:
    """The earlier ``train_fraction`` of the span for training, the rest for evaluation."""
    ts = fleet.samples["ts"]
    cut = ts.min() + train_fraction * (ts.max() - ts.min())
    early, late = fleet.samples[ts < cut], fleet.samples[ts >= cut]
    ev = fleet.events
    return (
        Fleet(early, ev[ev["ts"] < cut], fleet.nodes, f"{fleet.label} before {cut:.0f}"),
        Fleet(late, ev[ev["ts"] >= cut], fleet.nodes, f"{fleet.label} from {cut:.0f}"),
    )


def simulated_fleet(
    *, naming: str, seed: int, nodes: int, days: float, step_s: float, failure_rate: float
) -> Fleet:
    spec = FleetSpec(
        nodes=nodes, pools=min(4, nodes), duration_s=days * 86_400, step_s=step_s, seed=seed,
        naming=naming, failure_rate_per_node_day=failure_rate,  # type: ignore[arg-type]
    )  # fmt: skip
    fleet = simulate(spec)
    label = (
        f"{nodes} nodes x {days:g} days, step {step_s:g} s, {failure_rate:g} failures per "
        f"node-day, naming {naming}, seed {seed}"
    )
    return Fleet(fleet.samples, fleet.events, fleet.nodes, label)


def _replay_drains(
    fleet: Fleet, settings: Settings, model: BatchModel | None, report: Callable[[float], None]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The drains taken, the drains a safety limit held back, and the risk of the replay."""
    result = replay(
        samples=fleet.samples, nodes=fleet.nodes, settings=settings, model=model, progress=report
    )
    held_back = drain_decisions(result.actions, blocked=True)
    return drain_decisions(result.actions), held_back, result.risk


def evaluate_case(
    *,
    name: str,
    training: Fleet,
    evaluation: Fleet,
    settings: Settings,
    stages: Stages,
    detectors: tuple[str, ...] = DETECTORS,
) -> CaseResult:
    """Train on ``training``, then score every detector's drains on ``evaluation``."""
    case = CaseResult(
        name=name,
        description=f"train: {training.label}; evaluate: {evaluation.label}",
        events=evaluation.events,
        enter_threshold=settings.enter_threshold,
    )

    def score(drains: pd.DataFrame, blocked: pd.DataFrame | None = None) -> dict[str, Any]:
        return score_drains(
            drains=drains, events=evaluation.events, samples=evaluation.samples, blocked=blocked
        )

    if "predictor" in detectors:
        with stages.stage(f"{name}: train", 2):
            model, *_ = train(samples=training.samples, events=training.events, settings=settings)
        with stages.stage(f"{name}: replay predictor", 6) as report:
            drains, blocked, case.risk = _replay_drains(evaluation, settings, model, report)
        case.drains["predictor"], case.scores["predictor"] = drains, score(drains, blocked)
    if "static rules" in detectors:
        with stages.stage(f"{name}: static rules", 1):
            drains = rule_drains(evaluation.samples, cooldown_s=settings.cooldown_s)
            case.drains["static rules"], case.scores["static rules"] = drains, score(drains)
            for rule in DEFAULT_RULES:
                alone = rule_drains(
                    evaluation.samples, rules=(rule,), cooldown_s=settings.cooldown_s
                )
                case.per_rule[rule.name] = score(alone)
    if "river HST" in detectors:
        alone = {"online_detectors": ["river_hst"], "evidence_detectors": []}
        hst = settings.model_copy(update=alone)
        with stages.stage(f"{name}: replay river HST", 8) as report:
            drains, blocked, _ = _replay_drains(evaluation, hst, None, report)
        case.drains["river HST"], case.scores["river HST"] = drains, score(drains, blocked)
    if "IsolationForest" in detectors:
        # No events: no classifier, only the forest; it alone makes the risk.
        forest_only = settings.model_copy(
            update={"online_detectors": [], "evidence_detectors": [], "batch_weight": 1.0}
        )
        with stages.stage(f"{name}: train IsolationForest", 1):
            no_labels = training.events.iloc[:0]
            forest, *_ = train(samples=training.samples, events=no_labels, settings=forest_only)
        with stages.stage(f"{name}: replay IsolationForest", 4) as report:
            drains, blocked, _ = _replay_drains(evaluation, forest_only, forest, report)
        case.drains["IsolationForest"] = drains
        case.scores["IsolationForest"] = score(drains, blocked)
    return case


def run_nab(
    *, nab_dir: Path, results_dir: Path, report: Callable[[float], None]
) -> dict[str, dict[str, dict[str, float]]]:
    """Our ``ensemble`` through the engine on NAB, plus our scoring of the reference results."""
    from predictor.evaluation.nab import evaluate_nab, score_results

    windows = nab_dir / "labels" / "combined_windows.json"
    out = {
        NAB_DETECTOR: evaluate_nab(
            nab_dir=nab_dir, out_dir=results_dir, detector=NAB_DETECTOR,
            progress=lambda done: report(0.95 * done),
        )
    }  # fmt: skip
    for reference in REFERENCE_DETECTORS:
        if (nab_dir / "reference_results" / reference).exists():
            out[reference] = score_results(
                data_dir=nab_dir / "data",
                windows_file=windows,
                results_dir=nab_dir / "reference_results",
                detector=reference,
            )
    return out


def run_evaluation(
    *,
    out_dir: Path = Path("reports"),
    data: Path | None = None,
    train_data: Path | None = None,
    train_fraction: float = 0.5,
    nodes: int = 24,
    days: float = 2.0,
    fleets: int = 1,
    step_s: float = 60.0,
    failure_rate: float = FAILURE_RATE,
    nab_dir: Path | None = None,
    nab_results_dir: Path = Path("results/nab"),
    settings: Settings | None = None,
    detectors: tuple[str, ...] = DETECTORS,
    console: Console | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Evaluate on fleets (and NAB), write ``evaluation.md``, ``evaluation.json`` and plots.

    Without ``data``, ``fleets`` evaluation fleets per naming (seeds
    :data:`EVALUATION_SEEDS` + 100 k): one fleet's ten-odd failures say little about a
    median, so the report also pools the head to head over all of them.

    Returns the figures written to ``evaluation.json``.
    """
    from predictor.evaluation.report import write_report

    settings = settings or Settings()
    console = console or Console()
    started = time.perf_counter()
    have_nab = nab_dir is not None and (nab_dir / "labels" / "combined_windows.json").exists()
    n_cases = 1 if data is not None else len(NAMINGS) * fleets
    per_case = 2 + 6 + 1 + 8 + 1 + 4 + (0 if data is not None else 1)
    simulate_training = 0 if data is not None else len(NAMINGS)
    total = n_cases * per_case + simulate_training + (20 if have_nab else 0)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    evaluation_seeds = {
        naming: [seed + 100 * k for k in range(fleets)] for naming, seed in EVALUATION_SEEDS.items()
    }
    cases: list[CaseResult] = []
    nab: dict[str, dict[str, dict[str, float]]] | None = None
    with Progress(*columns, console=console, disable=not show_progress) as progress:
        stages = Stages(progress, total)
        if data is not None:
            fleet = load_fleet(data)
            if train_data is not None:
                training, evaluation = load_fleet(train_data), fleet
            else:
                training, evaluation = split_in_time(fleet, train_fraction)
            cases.append(
                evaluate_case(
                    name=data.name or str(data),
                    training=training,
                    evaluation=evaluation,
                    settings=settings,
                    stages=stages,
                    detectors=detectors,
                )
            )
        else:
            for naming in NAMINGS:
                kw: dict[str, Any] = dict(
                    naming=naming, nodes=nodes, days=days, step_s=step_s,
                    failure_rate=failure_rate,
                )  # fmt: skip
                with stages.stage(f"{naming}: simulate the training fleet", 1):
                    training = simulated_fleet(seed=TRAINING_SEEDS[naming], **kw)
                for seed in evaluation_seeds[naming]:
                    name = f"simulated, {naming} names"
                    if seed != EVALUATION_SEEDS[naming]:
                        name += f", seed {seed}"
                    with stages.stage(f"{name}: simulate the evaluation fleet", 1):
                        evaluation = simulated_fleet(seed=seed, **kw)
                    cases.append(
                        evaluate_case(
                            name=name,
                            training=training,
                            evaluation=evaluation,
                            settings=settings,
                            stages=stages,
                            detectors=detectors,
                        )
                    )
        if have_nab:
            assert nab_dir is not None
            with stages.stage("NAB: ensemble through the engine", 20) as report:
                nab = run_nab(nab_dir=nab_dir, results_dir=nab_results_dir, report=report)
    figures = write_report(
        out_dir=out_dir,
        cases=cases,
        nab=nab,
        nab_note=None if have_nab else f"NAB skipped: no corpus at {nab_dir}",
        settings=settings,
        run_info={
            "seconds": round(time.perf_counter() - started, 1),
            "training_seeds": TRAINING_SEEDS,
            "evaluation_seeds": evaluation_seeds,
            "nodes": nodes,
            "days": days,
            "step_s": step_s,
            "failure_rate_per_node_day": failure_rate,
            "stage_seconds": stages.seconds,
            "data": str(data) if data else None,
        },
    )
    return figures
