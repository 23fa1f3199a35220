"""NAB (Numenta Anomaly Benchmark) corpus runner and scorer.

The scorer is our own implementation of the published NAB v1.1 method: a probationary
period, scaled-sigmoid weighting of detections around each labelled window, three cost
profiles, one threshold per detector and profile optimised over the whole corpus, and
normalisation so that the null detector scores 0 and a perfect one 100.

Results follow NAB's layout ``<results_dir>/<detector>/<category>/<detector>_<file>.csv``
with columns ``timestamp,value,anomaly_score,label``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

# Profile name as in NAB's profiles.json -> our short name in reports.
PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")

# A score function takes aligned (file index, value, unix ts) arrays for one step of the
# corpus (record i of every file that has one) and returns one anomaly score per row.
ScoreFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class NabFile:
    """One corpus series: ``name`` is ``<category>/<file>.csv``."""

    name: str
    timestamps: np.ndarray  # datetime64[ns]
    values: np.ndarray
    windows: list[tuple[np.datetime64, np.datetime64]] = field(default_factory=list)


def scaled_sigmoid(p: np.ndarray | float) -> np.ndarray:
    """NAB's ``S(p) = 2 / (1 + exp(5 p)) - 1``, taken as -1 beyond ``p > 3``."""
    p = np.asarray(p, dtype=float)
    out = 2.0 / (1.0 + np.exp(5.0 * np.minimum(p, 50.0))) - 1.0
    return np.where(p > 3.0, -1.0, out)


def probation_length(n: int, fraction: float = 0.15) -> int:
    """Records at the start of a file that are never scored."""
    return int(min(math.floor(fraction * n), fraction * 5000))


def load_windows(windows_file: Path | str) -> dict[str, list[tuple[np.datetime64, np.datetime64]]]:
    """The labelled windows per ``<category>/<file>.csv``, as datetime64 pairs."""
    raw = json.loads(Path(windows_file).read_text())
    return {
        name: [(pd.Timestamp(a).to_datetime64(), pd.Timestamp(b).to_datetime64()) for a, b in wins]
        for name, wins in sorted(raw.items())
    }


def load_corpus(*, data_dir: Path | str, windows_file: Path | str) -> list[NabFile]:
    """Read every series named in ``windows_file`` from ``data_dir`` (sorted by name)."""
    files = []
    for name, wins in load_windows(windows_file).items():
        df = pd.read_csv(Path(data_dir) / name)
        ts = pd.to_datetime(df["timestamp"]).to_numpy(dtype="datetime64[ns]")
        files.append(NabFile(name, ts, df["value"].to_numpy(dtype=float), wins))
    return files


def load_profiles(profiles_file: Path | str | None = None) -> dict[str, dict[str, float]]:
    """Cost weights ``{profile: {"tp", "fp", "fn"}}``; NAB's defaults without a file."""
    if profiles_file is None:
        return {
            "standard": {"tp": 1.0, "fp": 0.11, "fn": 1.0},
            "reward_low_FP_rate": {"tp": 1.0, "fp": 0.22, "fn": 1.0},
            "reward_low_FN_rate": {"tp": 1.0, "fp": 0.11, "fn": 2.0},
        }
    raw = json.loads(Path(profiles_file).read_text())
    return {
        name: {
            "tp": float(p["CostMatrix"]["tpWeight"]),
            "fp": float(p["CostMatrix"]["fpWeight"]),
            "fn": float(p["CostMatrix"]["fnWeight"]),
        }
        for name, p in raw.items()
    }


@dataclass
class _FileParts:
    """Per scored record: its score, window id (-1 outside) and unweighted value.

    Inside a window the value is ``S(p) / S(-1)`` (reward, times tpWeight); outside it is
    ``S(p)`` or -1 (a cost, times fpWeight).
    """

    scores: np.ndarray
    window: np.ndarray
    weight: np.ndarray
    n_windows: int


def window_indices(
    timestamps: np.ndarray, windows: Sequence[tuple[np.datetime64, np.datetime64]]
) -> list[tuple[int, int]]:
    """Map each ``[start, end]`` window to inclusive row indices ``(left, right)``.

    Windows that contain no record are dropped (they cannot be detected or missed).
    """
    ts = np.asarray(timestamps, dtype="datetime64[ns]")
    starts = np.array([w[0] for w in windows], dtype="datetime64[ns]")
    ends = np.array([w[1] for w in windows], dtype="datetime64[ns]")
    lefts = np.searchsorted(ts, starts, side="left")
    rights = np.searchsorted(ts, ends, side="right") - 1
    return [(int(a), int(b)) for a, b in zip(lefts, rights, strict=True) if b >= a]


def file_parts(
    timestamps: np.ndarray,
    scores: np.ndarray,
    windows: Sequence[tuple[np.datetime64, np.datetime64]],
    window_offset: int = 0,
) -> _FileParts:
    """Weight every record of one file by its position relative to the windows."""
    n = len(timestamps)
    idx = np.arange(n)
    win_id = np.full(n, -1, dtype=np.int64)
    weight = np.full(n, -1.0)  # before the first window: a full false-positive cost
    s_left = float(scaled_sigmoid(-1.0))
    bounds = window_indices(timestamps, windows)
    for k, (left, right) in enumerate(bounds):
        width = right - left + 1
        inside = slice(left, right + 1)
        win_id[inside] = window_offset + k
        weight[inside] = scaled_sigmoid(-(right - idx[inside] + 1) / width) / s_left
        # After the window (up to the next one): cost fades in with distance from it.
        nxt = bounds[k + 1][0] if k + 1 < len(bounds) else n
        after = slice(right + 1, nxt)
        # A one-record window has width 1: NAB divides by (width - 1); guard it.
        denom = max(width - 1, 1)
        weight[after] = scaled_sigmoid(np.abs(right - idx[after]) / denom)
    start = probation_length(n)
    return _FileParts(scores[start:], win_id[start:], weight[start:], len(bounds))


def _sweep(parts: list[_FileParts], cost: dict[str, float]) -> dict[str, float]:
    """Best total raw score over all thresholds, in one sorted pass over the corpus."""
    scores = np.concatenate([p.scores for p in parts])
    win = np.concatenate([p.window for p in parts])
    weight = np.concatenate([p.weight for p in parts])
    n_windows = sum(p.n_windows for p in parts)
    base = -cost["fn"] * n_windows

    order = np.lexsort((np.arange(len(scores)), -scores))  # descending score, stable
    s, w, wt = scores[order], win[order], weight[order]
    delta = np.where(w < 0, cost["fp"] * wt, 0.0)
    is_fp = (w < 0).astype(np.int64)
    is_tp = np.zeros(len(s), dtype=np.int64)

    # A window is worth the best (earliest) detection at or above the threshold: as the
    # threshold falls its value is a running max, so a point adds the max's increment.
    in_win = np.flatnonzero(w >= 0)
    if len(in_win):
        grp = w[in_win]
        by_win = np.argsort(grp, kind="stable")  # keeps descending-score order per window
        g, vals = grp[by_win], cost["tp"] * wt[in_win][by_win]
        starts = np.r_[True, g[1:] != g[:-1]]
        # Running max per group: offset each group so one global maximum.accumulate works.
        gid = np.cumsum(starts) - 1
        shift = gid * (2.0 * float(np.abs(vals).max()) + 1.0)
        run = np.maximum.accumulate(vals + shift) - shift
        prev = np.where(starts, -cost["fn"], np.r_[0.0, run[:-1]])
        inc = run - prev
        pos = in_win[by_win]
        delta[pos] = inc
        is_tp[pos[starts]] = 1

    total = base + np.cumsum(delta)
    tp = np.cumsum(is_tp)
    fp = np.cumsum(is_fp)
    # Only the last of a run of equal scores is a reachable threshold.
    last = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, dtype=bool)
    cand = np.flatnonzero(last)
    best = {"raw": base, "threshold": 1.1, "tp": 0, "fp": 0, "fn": n_windows}
    if len(cand):
        k = cand[np.argmax(total[cand])]
        if total[k] > base:
            best = {
                "raw": float(total[k]),
                "threshold": float(s[k]),
                "tp": int(tp[k]),
                "fp": int(fp[k]),
                "fn": int(n_windows - tp[k]),
            }
    best["null"] = base
    best["perfect"] = cost["tp"] * n_windows
    return best


def score_parts(
    parts: list[_FileParts], profiles: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """Normalised NAB score per profile for pre-weighted corpus parts."""
    out = {}
    for name, cost in profiles.items():
        best = _sweep(parts, cost)
        span = best["perfect"] - best["null"]
        score = 100.0 * (best["raw"] - best["null"]) / span if span > 0 else 0.0
        out[name] = {
            "score": score,
            "threshold": best["threshold"],
            "raw": best["raw"],
            "tp": best["tp"],
            "fp": best["fp"],
            "fn": best["fn"],
        }
    return out


def result_path(results_dir: Path | str, detector: str, name: str) -> Path:
    """``<results_dir>/<detector>/<category>/<detector>_<file>.csv`` for ``name``."""
    category, fname = name.split("/", 1)
    return Path(results_dir) / detector / category / f"{detector}_{fname}"


def read_result(results_dir: Path | str, detector: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One results file's timestamps (datetime64[ns]) and anomaly scores."""
    df = pd.read_csv(result_path(results_dir, detector, name))
    ts = pd.to_datetime(df["timestamp"]).to_numpy(dtype="datetime64[ns]")
    return ts, df["anomaly_score"].to_numpy(dtype=float)


def score_results(
    *,
    data_dir: Path | str,
    windows_file: Path | str,
    results_dir: Path | str,
    detector: str,
    profiles_file: Path | str | None = None,
) -> dict[str, dict[str, float]]:
    """Score a detector's NAB results against the windows, per profile.

    The rows of each results CSV define that file's records. ``profiles_file`` defaults
    to ``labels/profiles.json`` next to ``windows_file`` when it exists.

    Returns
    -------
    dict
        ``{profile: {"score", "threshold", "raw", "tp", "fp", "fn"}}``.
    """
    del data_dir  # the results carry the records; kept for a uniform signature
    if profiles_file is None:
        candidate = Path(windows_file).parent / "profiles.json"
        profiles_file = candidate if candidate.exists() else None
    profiles = load_profiles(profiles_file)
    parts = []
    offset = 0
    for name, wins in load_windows(windows_file).items():
        ts, scores = read_result(results_dir, detector, name)
        p = file_parts(ts, scores, wins, offset)
        offset += p.n_windows
        parts.append(p)
    return score_parts(parts, profiles)


def detector_score_fn(detector: object) -> ScoreFn:
    """A score function that feeds the corpus straight into an online detector."""
    return detector.score_learn_many  # type: ignore[attr-defined, no-any-return]


def run_corpus(
    *,
    data_dir: Path | str,
    windows_file: Path | str,
    out_dir: Path | str,
    name: str,
    score_fn: ScoreFn | None = None,
    progress: Callable[[float], None] | None = None,
) -> Path:
    """Stream every corpus series through ``score_fn`` and write NAB results files.

    All series advance together: step ``i`` passes record ``i`` of every file that has
    one, keyed by the file's index in the sorted corpus, so one call scores many series
    at once just as the service does.

    Parameters
    ----------
    score_fn
        ``(keys, values, ts) -> scores``; scores one step and learns it. Defaults to the
        service's own scoring path (see :func:`default_score_fn`).
    progress
        Called now and then with the share of the steps done.

    Returns
    -------
    Path
        ``out_dir / name``.
    """
    files = load_corpus(data_dir=data_dir, windows_file=windows_file)
    if score_fn is None:
        score_fn = default_score_fn([f.name for f in files])
    lengths = np.array([len(f.values) for f in files])
    longest = int(lengths.max()) if len(files) else 0
    # Pad into (files, steps) matrices so each step is a column slice, not a Python loop.
    values = np.zeros((len(files), longest))
    ts = np.zeros((len(files), longest))
    scores = np.zeros((len(files), longest))
    for k, f in enumerate(files):
        values[k, : len(f.values)] = f.values
        ts[k, : len(f.values)] = f.timestamps.astype("datetime64[ns]").astype(np.int64) / 1e9
    all_keys = np.arange(len(files))
    for i in range(longest):
        keys = all_keys[lengths > i]
        scores[keys, i] = score_fn(keys, values[keys, i], ts[keys, i])
        if progress is not None and (i + 1) % 100 == 0:
            progress((i + 1) / longest)
    for k, f in enumerate(files):
        n = len(f.values)
        label = np.zeros(n, dtype=np.int64)
        for left, right in window_indices(f.timestamps, f.windows):
            label[left : right + 1] = 1
        path = result_path(out_dir, name, f.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(
            {
                "timestamp": pd.to_datetime(f.timestamps).strftime("%Y-%m-%d %H:%M:%S"),
                "value": f.values,
                "anomaly_score": np.clip(scores[k, :n], 0.0, 1.0),
                "label": label,
            }
        ).to_csv(path, index=False)
    return Path(out_dir) / name


def default_score_fn(names: Sequence[str], detector: str = "ensemble") -> ScoreFn:
    """The NAB run's default scoring path: the service's own scoring engine.

    Each corpus file is node ``<category>/<file>`` with one metric ``"value"``, scored by
    the engine configured with the online detector ``detector``, so the benchmark runs
    the same code as the API.
    """
    from predictor.config import Settings
    from predictor.ingest.batch import SampleBatch
    from predictor.scoring.engine import ScoringEngine

    engine = ScoringEngine(settings=Settings(online_detectors=[detector]))
    nodes = np.asarray(names, dtype=object)

    def score(keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> np.ndarray:
        batch = SampleBatch(
            node=nodes[keys],
            metric=np.full(len(keys), "value", dtype=object),
            ts=np.asarray(ts, dtype=np.float64),
            value=np.asarray(values, dtype=np.float64),
        )
        return np.asarray(engine.process(batch).sample_scores, dtype=float)

    return score


def nab_table(results: dict[str, dict[str, dict[str, float]]], digits: int = 2) -> str:
    """A markdown table of normalised scores, one row per detector.

    >>> print(nab_table({"null": {p: {"score": 0.0} for p in PROFILES}}))
    | detector | standard | reward low FP | reward low FN |
    |---|---|---|---|
    | null | 0.00 | 0.00 | 0.00 |
    """
    lines = [
        "| detector | standard | reward low FP | reward low FN |",
        "|---|---|---|---|",
    ]
    for detector, by_profile in results.items():
        cells = [
            f"{by_profile[p]['score']:.{digits}f}" if p in by_profile else "" for p in PROFILES
        ]
        lines.append(f"| {detector} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate_nab(
    *,
    nab_dir: Path | str,
    out_dir: Path | str,
    detector: str = "ensemble",
    name: str | None = None,
    through_engine: bool = True,
    progress: Callable[[float], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Run ``detector`` over a NAB corpus directory and score it (``make evaluate``).

    ``nab_dir`` holds ``data/`` and ``labels/combined_windows.json`` (and optionally
    ``labels/profiles.json``); results go to ``out_dir/<name>/``. With
    ``through_engine`` the samples go through the service's scoring engine, otherwise
    straight into the detector.
    """
    nab_dir = Path(nab_dir)
    name = name or detector
    windows = nab_dir / "labels" / "combined_windows.json"
    names = list(load_windows(windows))
    if through_engine:
        score_fn = default_score_fn(names, detector)
    else:
        from predictor.detectors import make_detector

        score_fn = detector_score_fn(make_detector(detector))
    run_corpus(
        data_dir=nab_dir / "data",
        windows_file=windows,
        out_dir=out_dir,
        name=name,
        score_fn=score_fn,
        progress=progress,
    )
    return score_results(
        data_dir=nab_dir / "data", windows_file=windows, results_dir=out_dir, detector=name
    )
