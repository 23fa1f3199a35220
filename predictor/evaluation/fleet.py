"""Fleet evaluation: replay a labelled fleet through the service's own scorer and policy.

The replay feeds the samples to the same store -> scorer -> policy path the API uses,
step by step in event time, with the policy in dry-run. Then each failure is matched to
the earliest drain decision before it (within ``match_window_s``), and every drain that
no failure followed is a false drain.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from predictor.actuators import LogActuator
from predictor.config import Settings
from predictor.ingest.batch import SampleBatch
from predictor.scoring.scorer import Scorer
from predictor.store import SQLiteStore
from predictor.training.model import BatchModel

DRAIN_ACTIONS = ("drain", "failover")


@dataclass
class Replay:
    actions: pd.DataFrame  # the audit log of the replay
    risk: pd.DataFrame  # every node evaluation


def replay(
    *,
    samples: pd.DataFrame,
    nodes: pd.DataFrame | None,
    settings: Settings,
    model: BatchModel | None,
    chunk_s: float = 600.0,
    progress: Callable[[float], None] | None = None,
) -> Replay:
    """Run samples through store, scorer and a dry-run policy; return actions and risk."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = settings.model_copy(update={"db": Path(tmp) / "replay.db", "dry_run": True})
        store = SQLiteStore(cfg.db)  # a scratch replay, whatever the service uses
        try:
            if nodes is not None:
                for row in nodes.to_dict("records"):
                    store.upsert_node(str(row.pop("node")), row)
            scorer = Scorer.build(settings=cfg, store=store, actuator=LogActuator(), model=model)
            ordered = samples.sort_values("ts", kind="stable")
            chunk = np.floor((ordered["ts"] - ordered["ts"].min()) / chunk_s).to_numpy()
            risks = []
            bounds = np.searchsorted(chunk, np.arange(chunk.max() + 2))
            for i in range(len(bounds) - 1):
                part = ordered.iloc[bounds[i] : bounds[i + 1]]
                if not len(part):
                    continue
                store.append_samples(SampleBatch.from_frame(part))
                batch, last = store.samples_after(scorer.scored_rowid, 10**9)
                # The live scorer's own step, minus the risk history nobody reads here.
                risk = scorer.score(batch, position=last, keep_history=False)
                risks.append(risk.drop(columns="why"))
                if progress:
                    progress((i + 1) / (len(bounds) - 1))
            actions = pd.DataFrame(store.actions(limit=10**9))
        finally:
            store.close()
    risk = pd.concat(risks, ignore_index=True) if risks else pd.DataFrame()
    return Replay(actions=actions, risk=risk)


def drain_decisions(actions: pd.DataFrame, *, blocked: bool = False) -> pd.DataFrame:
    """The drains taken (or, with ``blocked``, those a safety limit held back): node, ts."""
    if actions.empty:
        return pd.DataFrame(columns=["node", "ts"])
    chosen = actions["action"].isin(DRAIN_ACTIONS) & ((actions["status"] == "blocked") == blocked)
    return actions.loc[chosen, ["node", "ts"]].sort_values("ts").reset_index(drop=True)


def score_drains(
    *,
    drains: pd.DataFrame,
    events: pd.DataFrame,
    samples: pd.DataFrame,
    blocked: pd.DataFrame | None = None,
    match_window_s: float = 6 * 3600.0,
) -> dict[str, Any]:
    """Recall of failures preceded by a drain, lead times, and false drains per 1000 node-days.

    A drain counts for a failure when it falls in ``[failure - match_window_s, failure]``;
    a drain with no failure of its node in the ``match_window_s`` after it is false.

    When the events say when each failure's precursor began (``precursor_start_ts``, NaN
    for a failure without one), also: recall over the failures with a precursor, and lead
    times counting only drains made once the precursor had begun (a drain before that
    foresaw nothing: with many false drains, one lands in the window by chance).

    With ``blocked`` (the drain decisions a safety limit held back), also how many of the
    missed failures were foreseen but held back, e.g. by the budget while a pool-mate was
    drained: the detector's miss and the policy's are different fixes.
    """
    failures = failure_leads(drains=drains, events=events, match_window_s=match_window_s)
    per_mode: dict[str, dict[str, Any]] = {}
    false = 0
    for d in drains.itertuples():
        node_failures = failures[(failures["node"] == d.node) & (failures["ts"] >= d.ts)]
        if not (node_failures["ts"] <= d.ts + match_window_s).any():
            false += 1
    span_days = (samples.groupby("node")["ts"].agg(lambda s: s.max() - s.min()).sum()) / 86400
    for mode, group in failures.groupby("mode"):
        caught = group["lead_s"].notna()
        per_mode[str(mode)] = {
            "failures": int(len(group)),
            "recall": float(caught.mean()) if len(group) else float("nan"),
            "median_lead_min": float(group.loc[caught, "lead_s"].median() / 60)
            if caught.any()
            else None,
        }
    held_back = None
    if blocked is not None:
        foreseen = failure_leads(drains=blocked, events=events, match_window_s=match_window_s)
        held_back = int((failures["lead_s"].isna() & foreseen["lead_s"].notna()).sum())
    caught = failures["lead_s"].dropna()
    leads = caught.to_numpy()
    with_precursor = failures[failures["onset_ts"].notna()]
    onset_leads = with_precursor["onset_lead_s"].dropna().to_numpy()
    return {
        "failures": int(len(failures)),
        "caught": int(len(caught)),
        "median_lead_min": float(np.median(leads) / 60) if len(leads) else None,
        "p10_lead_min": float(np.quantile(leads, 0.1) / 60) if len(leads) else None,
        "drains": int(len(drains)),
        "false_drains": int(false),
        "node_days": float(span_days),
        "false_drains_per_1000_node_days": float(1000 * false / max(span_days, 1e-9)),
        "per_mode": per_mode,
        "precursor_failures": int(len(with_precursor)),
        "precursor_caught": int(with_precursor["lead_s"].notna().sum()),
        "precursor_caught_after_onset": int(len(onset_leads)),
        "missed_held_back": held_back,
        "median_lead_after_onset_min": float(np.median(onset_leads) / 60)
        if len(onset_leads)
        else None,
    }


def failure_leads(
    *, drains: pd.DataFrame, events: pd.DataFrame, match_window_s: float = 6 * 3600.0
) -> pd.DataFrame:
    """Each failure with the lead time of its earliest matching drain (NaN if none).

    The same matching as :func:`score_drains`: a drain in ``[failure - match_window_s,
    failure]`` on the failure's node. Columns: ``node, ts, mode, lead_s``, and
    ``onset_ts`` (the precursor's start, NaN if none or not known) with ``onset_lead_s``
    (the same, counting only drains at or after ``onset_ts``).
    """
    failures = events[events["kind"] == "failure"]
    mode = failures["mode"] if "mode" in failures else pd.Series("all", index=failures.index)
    onset = (
        failures["precursor_start_ts"].astype(float)
        if "precursor_start_ts" in failures
        else pd.Series(np.nan, index=failures.index)
    )
    out = pd.DataFrame(
        {"node": failures["node"], "ts": failures["ts"], "mode": mode, "lead_s": np.nan,
         "onset_ts": onset, "onset_lead_s": np.nan}
    ).reset_index(drop=True)  # fmt: skip
    for i, (node, ts, start) in enumerate(
        zip(out["node"], out["ts"], out["onset_ts"], strict=True)
    ):
        mine = drains["ts"][(drains["node"] == node) & (drains["ts"] <= ts)]
        mine = mine[mine >= ts - match_window_s]
        if len(mine):
            out.loc[i, "lead_s"] = ts - mine.min()
        after_onset = mine[mine >= start]  # empty when start is NaN
        if len(after_onset):
            out.loc[i, "onset_lead_s"] = ts - after_onset.min()
    return out


def head_to_head(
    *, ours: pd.DataFrame, rival: pd.DataFrame, events: pd.DataFrame
) -> dict[str, Any]:
    """Leads after onset of two detectors' drains on the failures with a precursor both caught.

    Each detector's median lead in :func:`score_drains` is over the failures it caught
    itself, so one that misses the hard failures (short precursors, patchy data) is not
    marked down there for them; this compares the two on the same failures, in all and
    per failure mode. ``precursor_median_min`` is the median precursor length on them: the
    lead of a drain at each precursor's first sample, the most any detector could lead by.
    """
    leads = failure_leads(drains=ours, events=events)
    mine = leads["onset_lead_s"]
    theirs = failure_leads(drains=rival, events=events)["onset_lead_s"]
    both = mine.notna() & theirs.notna()
    precursor_s = leads["ts"] - leads["onset_ts"]

    def medians(on: pd.Series) -> dict[str, Any]:
        def minutes(lead_s: pd.Series) -> float | None:
            return float(lead_s[on].median() / 60) if on.any() else None

        return {
            "both_caught": int(on.sum()),
            "ours_median_min": minutes(mine),
            "rival_median_min": minutes(theirs),
            "precursor_median_min": minutes(precursor_s),
        }

    return medians(both) | {
        "ratio_interval": ratio_interval(mine[both].to_numpy(), theirs[both].to_numpy()),
        "only_ours": int((mine.notna() & theirs.isna()).sum()),
        "only_rival": int((mine.isna() & theirs.notna()).sum()),
        "ours_earlier": int((mine[both] > theirs[both]).sum()),
        "per_mode": {
            mode: medians(both & (leads["mode"] == mode))
            for mode in sorted(leads.loc[both, "mode"].unique())
        },
    }


def pooled_head_to_head(
    fleets: Sequence[tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]],
) -> dict[str, Any]:
    """:func:`head_to_head` over the failures of several fleets together.

    Each fleet is ``(ours, rival, events)``; its node names are kept apart from the
    other fleets' (every simulated fleet has a ``node-000``).
    """

    def tagged(frame: pd.DataFrame, i: int) -> pd.DataFrame:
        return frame.assign(node=f"{i}/" + frame["node"].astype(str))

    ours, rival, events = (
        pd.concat([tagged(fleet[part], i) for i, fleet in enumerate(fleets)], ignore_index=True)
        for part in range(3)
    )
    return head_to_head(ours=ours, rival=rival, events=events)


def ratio_interval(
    ours: np.ndarray, rival: np.ndarray, *, level: float = 0.9, resamples: int = 2000
) -> list[float] | None:
    """Paired bootstrap interval of ``median(ours) / median(rival)`` over the failures.

    A fleet's failures are a small sample (a short fleet has about ten both caught), and
    which ones it draws moves the ratio of the medians by far more than most detector
    changes: resampling the failures (each with both leads) shows by how much. Fixed
    seed, so a report is reproducible. None below two failures.
    """
    if len(ours) < 2:
        return None
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(ours), size=(resamples, len(ours)))
    theirs = np.median(rival[picks], axis=1)
    ratios = np.median(ours[picks], axis=1) / np.where(theirs > 0, theirs, np.nan)
    ratios = ratios[np.isfinite(ratios)]
    if not len(ratios):
        return None
    tail = (1 - level) / 2
    return [float(q) for q in np.quantile(ratios, [tail, 1 - tail])]
