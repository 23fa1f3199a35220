"""The evaluation report: ``evaluation.md``, ``evaluation.json`` and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from predictor.config import Settings  # noqa: E402
from predictor.evaluation.fleet import (  # noqa: E402
    failure_leads,
    head_to_head,
    pooled_head_to_head,
)
from predictor.evaluation.nab import PROFILES, nab_table  # noqa: E402

if TYPE_CHECKING:
    from predictor.evaluation.run import CaseResult

TIMELINES_PNG = "risk_timelines.png"
LEAD_TIMES_PNG = "lead_times.png"
FALSE_DRAINS_PNG = "false_drains.png"
COLOURS = {
    "predictor": "tab:blue",
    "static rules": "tab:orange",
    "river HST": "tab:green",
    "IsolationForest": "tab:purple",
}


def _minutes(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.0f}"


def _percent(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.0f}%"


def detector_table(scores: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per detector with recall, lead times and false drains."""
    lines = [
        "| detector | failures caught | recall | median lead (min) | p10 lead (min) "
        "| with a precursor: caught | median lead after its onset (min) "
        "| missed: held back by a safety limit "
        "| drains | false drains | false drains / 1000 node-days |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in scores.items():
        recall = s["caught"] / s["failures"] if s["failures"] else float("nan")
        held_back = s.get("missed_held_back")  # None: no policy, nothing to hold back
        lines.append(
            f"| {name} | {s['caught']}/{s['failures']} | {_percent(recall)} "
            f"| {_minutes(s['median_lead_min'])} | {_minutes(s['p10_lead_min'])} "
            f"| {s.get('precursor_caught', 0)}/{s.get('precursor_failures', 0)} "
            f"| {_minutes(s.get('median_lead_after_onset_min'))} "
            f"| {'-' if held_back is None else held_back} "
            f"| {s['drains']} | {s['false_drains']} "
            f"| {s['false_drains_per_1000_node_days']:.0f} |"
        )
    return "\n".join(lines)


def _ratio(lead: float | None, rival: float | None) -> str:
    return f"{lead / rival:.1f}x" if lead is not None and rival else "-"


def _interval(bounds: list[float] | None) -> str:
    if not bounds:
        return ""
    low, high = bounds
    return f", 90% bootstrap interval over these failures {low:.1f}x-{high:.1f}x"


def head_to_head_line(pair: dict[str, Any]) -> str:
    """Markdown: predictor against the static rules on the failures both caught."""
    ours, theirs = pair["ours_median_min"], pair["rival_median_min"]
    ceiling = pair["precursor_median_min"]
    return (
        f"Head to head, on the {pair['both_caught']} failures with a precursor that both "
        "predictor and the static rules caught after its onset: median lead after onset "
        f"{_minutes(ours)} min against {_minutes(theirs)} ({_ratio(ours, theirs)}"
        f"{_interval(pair['ratio_interval'])}); "
        f"predictor drained earlier on {pair['ours_earlier']} of them. Caught after onset "
        f"by predictor only: {pair['only_ours']}; by the static rules only: "
        f"{pair['only_rival']}. The most any detector could lead by on the same failures "
        "(a drain at each precursor's first sample, as the labels give it): "
        f"{_minutes(ceiling)} min ({_ratio(ceiling, theirs)})."
    )


def _head_to_head_md(pair: dict[str, Any]) -> list[str]:
    md = ["", head_to_head_line(pair)]
    if pair["per_mode"]:
        md += ["", "Head to head per failure mode:", "", head_to_head_table(pair)]
    return md


def head_to_head_table(pair: dict[str, Any]) -> str:
    """Markdown: the head-to-head medians per failure mode, beside that ceiling."""
    lines = [
        "| failure mode | both caught | predictor (min) | static rules (min) | ratio "
        "| drain at onset (min) | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, m in pair["per_mode"].items():
        ours, theirs = m["ours_median_min"], m["rival_median_min"]
        ceiling = m["precursor_median_min"]
        lines.append(
            f"| {mode} | {m['both_caught']} | {_minutes(ours)} | {_minutes(theirs)} "
            f"| {_ratio(ours, theirs)} | {_minutes(ceiling)} | {_ratio(ceiling, theirs)} |"
        )
    return "\n".join(lines)


def mode_table(scores: dict[str, dict[str, Any]]) -> str:
    """Markdown: recall (and median lead in minutes) per failure mode and detector."""
    modes = sorted({m for s in scores.values() for m in s["per_mode"]})
    lines = [
        "| failure mode | failures | " + " | ".join(scores) + " |",
        "|---|---|" + "---|" * len(scores),
    ]
    for mode in modes:
        cells = []
        count = 0
        for s in scores.values():
            m = s["per_mode"].get(mode)
            if m is None:
                cells.append("-")
                continue
            count = m["failures"]
            lead = m["median_lead_min"]
            cells.append(_percent(m["recall"]) + (f" ({lead:.0f} min)" if lead is not None else ""))
        lines.append(f"| {mode} | {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def published_nab_table(nab: dict[str, dict[str, dict[str, float]]] | None) -> str:
    """Markdown: our NAB scores, our scoring of the reference results, the published ones."""
    from predictor.evaluation.run import NAB_DETECTOR, PUBLISHED_NAB

    lines = [
        "| detector | source | standard | reward low FP | reward low FN |",
        "|---|---|---|---|---|",
    ]
    for name, by_profile in (nab or {}).items():
        source = (
            "ours, through the scoring engine"
            if name == NAB_DETECTOR
            else "reference results, rescored by our scorer"
        )
        cells = [f"{by_profile[p]['score']:.2f}" if p in by_profile else "" for p in PROFILES]
        label = f"**{name}**" if name == NAB_DETECTOR else name
        lines.append(f"| {label} | {source} | " + " | ".join(cells) + " |")
    for name, values in PUBLISHED_NAB.items():
        cells = ["" if v is None else f"{v:.2f}" for v in values]
        lines.append(f"| {name} | published | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- plots ------------------------------------------------------------------------------
def _pick_failures(case: CaseResult, leads: pd.DataFrame, count: int = 4) -> pd.DataFrame:
    """A few failures with a precursor, of different modes, caught and missed ones mixed."""
    candidates = leads[leads["mode"] != "sudden_crash"].copy()
    candidates["caught"] = candidates["lead_s"].notna()
    picked: list[int] = []
    seen_modes: set[str] = set()
    # Alternate caught and missed, one failure per mode first.
    for want_caught in (True, False, True, False, True, False):
        pool = candidates[(candidates["caught"] == want_caught) & ~candidates.index.isin(picked)]
        fresh = pool[~pool["mode"].isin(seen_modes)]
        choice = fresh if len(fresh) else pool
        if len(choice) and len(picked) < count:
            index = int(choice.index[0])
            picked.append(index)
            seen_modes.add(str(candidates.loc[index, "mode"]))
    return candidates.loc[picked]


def plot_timelines(case: CaseResult, path: Path) -> bool:
    """Risk around a few failures, with the failure, our drains and the rules' drains."""
    if case.risk is None or case.risk.empty or case.events is None:
        return False
    ours = case.drains.get("predictor", pd.DataFrame(columns=["node", "ts"]))
    rules = case.drains.get("static rules", pd.DataFrame(columns=["node", "ts"]))
    leads = failure_leads(drains=ours, events=case.events)
    chosen = _pick_failures(case, leads)
    if chosen.empty:
        return False
    fig, axes = plt.subplots(len(chosen), 1, figsize=(10, 2.6 * len(chosen)), squeeze=False)
    for ax, failure in zip(axes[:, 0], chosen.itertuples(), strict=True):
        start, end = failure.ts - 4 * 3600, failure.ts + 1800
        node_risk = case.risk[
            (case.risk["node"] == failure.node)
            & (case.risk["ts"] >= start)
            & (case.risk["ts"] <= end)
        ]
        hours = (node_risk["ts"] - failure.ts) / 3600
        ax.plot(hours, node_risk["risk"], color=COLOURS["predictor"], lw=1, label="risk")
        ax.axhline(case.enter_threshold, color="grey", ls="--", lw=0.8, label="drain threshold")
        ax.axvline(0, color="red", lw=2, label="failure")
        for frame, colour, label in (
            (ours, COLOURS["predictor"], "our drain"),
            (rules, COLOURS["static rules"], "static-rule drain"),
        ):
            mine = frame[(frame["node"] == failure.node) & frame["ts"].between(start, end)]
            for i, ts in enumerate(mine["ts"]):
                ax.axvline(
                    (ts - failure.ts) / 3600, color=colour, ls=":", lw=2,
                    label=label if i == 0 else None,
                )  # fmt: skip
        lead = (
            "missed"
            if np.isnan(failure.lead_s)
            else f"drained {failure.lead_s / 60:.0f} min before"
        )
        ax.set_title(f"{failure.node}: {failure.mode} ({lead})", fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(-4, 0.5)
        ax.set_ylabel("risk")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("hours relative to the failure")
    axes[0, 0].legend(loc="upper left", fontsize=8, ncol=5)
    fig.suptitle(f"Risk before failures ({case.name})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_lead_times(cases: list[CaseResult], path: Path) -> None:
    """Distribution of lead times over all caught failures, per detector."""
    leads: dict[str, list[float]] = {}
    for case in cases:
        assert case.events is not None
        for name, drains in case.drains.items():
            found = failure_leads(drains=drains, events=case.events)["lead_s"].dropna()
            leads.setdefault(name, []).extend((found / 60).tolist())
    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = [n for n in COLOURS if n in leads] + [n for n in leads if n not in COLOURS]
    bins = np.linspace(0, 360, 25).tolist()
    for name in names:
        values = leads[name]
        median = f"median {np.median(values):.0f} min" if values else "none caught"
        ax.hist(
            values, bins=bins, histtype="step", lw=2, color=COLOURS.get(name),
            label=f"{name} (n={len(values)}, {median})",
        )  # fmt: skip
    ax.set_xlabel("lead time: failure minus first drain (minutes)")
    ax.set_ylabel("caught failures")
    ax.set_title("Lead time of caught failures (all evaluation fleets)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_false_drains(cases: list[CaseResult], path: Path) -> None:
    """Recall and false drains per 1000 node-days, per detector and fleet."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    detectors = list(dict.fromkeys(d for c in cases for d in c.scores))
    width = 0.8 / max(len(cases), 1)
    x = np.arange(len(detectors))
    for i, case in enumerate(cases):
        recall = [
            case.scores[d]["caught"] / max(case.scores[d]["failures"], 1)
            if d in case.scores
            else 0.0
            for d in detectors
        ]
        false = [
            case.scores[d]["false_drains_per_1000_node_days"] if d in case.scores else 0.0
            for d in detectors
        ]
        offset = x + (i - (len(cases) - 1) / 2) * width
        left.bar(offset, recall, width, label=case.name)
        right.bar(offset, false, width, label=case.name)
        for xi, value in zip(offset, false, strict=True):
            right.annotate(f"{value:.0f}", (xi, value), ha="center", va="bottom", fontsize=8)
    for ax, title in (
        (left, "recall: failures preceded by a drain"),
        (right, "false drains per 1000 node-days (lower is better)"),
    ):
        ax.set_xticks(x, detectors, rotation=15)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    left.set_ylim(0, 1)
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the report -------------------------------------------------------------------------
def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(
    *,
    out_dir: Path,
    cases: list[CaseResult],
    nab: dict[str, dict[str, dict[str, float]]] | None,
    nab_note: str | None,
    settings: Settings,
    run_info: dict[str, Any],
) -> dict[str, Any]:
    """Write ``evaluation.md``, ``evaluation.json`` and the PNGs; return the JSON figures."""
    from predictor.evaluation.run import PUBLISHED_NAB

    out_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    if cases and plot_timelines(cases[0], out_dir / TIMELINES_PNG):
        plots.append(TIMELINES_PNG)
    if cases:
        plot_lead_times(cases, out_dir / LEAD_TIMES_PNG)
        plot_false_drains(cases, out_dir / FALSE_DRAINS_PNG)
        plots += [LEAD_TIMES_PNG, FALSE_DRAINS_PNG]

    md = [
        "# Evaluation",
        "",
        "Written by `predictor evaluate` (`make evaluate`) in "
        f"{run_info['seconds']:.0f} s. Figures are also in `evaluation.json`.",
        "",
        "## Fleet evaluation",
        "",
        "Each evaluation fleet is replayed in event time through the service's scorer and "
        "the policy in dry-run. A failure counts as caught when a drain decision on its node "
        "falls in the 6 h before it; the lead time is the failure time minus the first such "
        "drain. A drain with no failure of its node in the 6 h after it is a false drain. "
        "The labels say when each failure's precursor began (none for a sudden crash): "
        "'with a precursor' counts those failures only, and 'lead after its onset' counts "
        "only drains made once the precursor had begun — a detector that drains at random "
        "often has a drain in the 6 h by chance, which says nothing about foresight. "
        "'Held back by a safety limit' counts the missed failures whose drain was decided "
        "but blocked (the budget while a pool-mate was drained, a cooldown, the fail-safe): "
        "foreseen by the detector, stopped by the policy.",
        "",
        f"- Simulated fleets: training seeds {run_info['training_seeds']}, evaluation seeds "
        f"{run_info['evaluation_seeds']} (kept for this report; never used for development).",
        "- `predictor`: batch model trained on the training fleet with the same metric naming "
        f"+ online detectors {settings.online_detectors} + evidence detectors "
        f"{settings.evidence_detectors}; policy enter threshold "
        f"{settings.enter_threshold}, minimum duration {settings.min_duration_s:.0f} s, "
        f"cooldown {settings.cooldown_s:.0f} s, budget {settings.budget_max_nodes} nodes / "
        f"{settings.budget_max_fraction:.0%} of a pool.",
        "- `static rules`: Prometheus-style alerting rules (below), each firing once per "
        f"episode, a {settings.cooldown_s:.0f} s cooldown per node, no disruption budget.",
        "- `river HST`: river HalfSpaceTrees alone (no evidence detectors, no batch model), "
        "same policy.",
        "- `IsolationForest`: the batch model trained without labels (no classifier) alone "
        "(no online or evidence detectors), same policy.",
    ]
    fleet_json: dict[str, Any] = {}
    pooled_from: list[tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]] = []
    for case in cases:
        md += [
            "",
            f"### {case.name}",
            "",
            case.description,
            "",
            detector_table(case.scores),
        ]
        pair = None
        if case.events is not None and {"predictor", "static rules"} <= case.drains.keys():
            ours, rules = case.drains["predictor"], case.drains["static rules"]
            pooled_from.append((ours, rules, case.events))
            pair = head_to_head(ours=ours, rival=rules, events=case.events)
            md += _head_to_head_md(pair)
        md += [
            "",
            "Recall per failure mode (median lead time):",
            "",
            mode_table(case.scores),
        ]
        if case.per_rule:
            md += ["", "Each static rule alone:", "", detector_table(case.per_rule)]
        fleet_json[case.name] = {
            "description": case.description,
            "detectors": case.scores,
            "static_rules_alone": case.per_rule,
            "head_to_head_static_rules": pair,
        }
    pooled = None
    if len(pooled_from) > 1:
        pooled = pooled_head_to_head(pooled_from)
        md += ["", "### All fleets pooled", "", "The failures of every fleet above together."]
        md += _head_to_head_md(pooled)
    md += ["", "## NAB (development subset)", ""]
    if nab is not None:
        md += [
            "Normalised NAB scores (null = 0, perfect = 100) on the 34-file development "
            "subset, scored with our implementation of the NAB v1.1 scorer. Our detector is "
            "the online `ensemble`, run through the scoring engine as the service runs it. "
            "The `numenta` and `ARTime` rows rescore their published results with our scorer "
            "(a check of the scorer against the published numbers below).",
            "",
            published_nab_table(nab),
            "",
            "Our scores with NAB's threshold per profile:",
            "",
            nab_table(nab),
        ]
    else:
        md.append(nab_note or "NAB skipped.")
    if plots:
        md += ["", "## Plots", ""]
        titles = {
            TIMELINES_PNG: "Risk around a few failures",
            LEAD_TIMES_PNG: "Lead-time distribution",
            FALSE_DRAINS_PNG: "Recall and false drains per detector",
        }
        md += [f"![{titles[p]}]({p})" for p in plots]
    (out_dir / "evaluation.md").write_text("\n".join(md) + "\n")

    figures = _clean(
        {
            "run": run_info,
            "settings": {
                "online_detectors": settings.online_detectors,
                "enter_threshold": settings.enter_threshold,
                "cooldown_s": settings.cooldown_s,
                "min_duration_s": settings.min_duration_s,
            },
            "fleet": fleet_json,
            "pooled_head_to_head_static_rules": pooled,
            "nab": nab,
            "nab_note": nab_note,
            "published_nab": {
                name: dict(zip(PROFILES, values, strict=True))
                for name, values in PUBLISHED_NAB.items()
            },
            "plots": plots,
        }
    )
    (out_dir / "evaluation.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures
