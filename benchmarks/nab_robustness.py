"""How much of a detector's NAB score is tuning? Perturbations, categories, split halves.

The corpus threshold is optimised on the very files it is scored on, and a detector's
constants may be too. This runs a detector straight over a NAB corpus (the engine's
sample scores are the detector's own) and reports:

- the normalised score per profile, for the defaults and for each ``--vary`` constant
  scaled by 0.5 and 1.5 (the score should not collapse);
- the standard score per category, each with its own optimised threshold;
- split halves: the threshold optimised on a random half of the files, applied to the
  other half, against that half's own optimum (mean over ``--splits`` random splits).

The same categories and split halves are reported for the published detectors in
``--reference`` (their results files), so the transferred scores compare like for like.

::

    python -m benchmarks.nab_robustness --nab /work/shared/datasets/nab-dev \\
        --vary explained,alarm,alpha --reference numenta,ARTime
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from predictor.detectors import REGISTRY
from predictor.evaluation import nab


def corpus(nab_dir: Path) -> tuple[list[nab.NabFile], dict[str, dict[str, float]]]:
    """A NAB corpus's files with their windows, and its scoring profiles."""
    labels = nab_dir / "labels"
    files = nab.load_corpus(
        data_dir=nab_dir / "data", windows_file=labels / "combined_windows.json"
    )
    return files, nab.load_profiles(labels / "profiles.json")


def reference_scores(files: list[nab.NabFile], results_dir: Path, name: str) -> list[np.ndarray]:
    """A published detector's scores, aligned to each file's records."""
    out = []
    for f in files:
        stamps, scores = nab.read_result(results_dir, name, f.name)
        if not np.array_equal(stamps, f.timestamps):
            raise ValueError(f"{name} results for {f.name} do not match the data's records")
        out.append(scores)
    return out


def run_scores(files: list[nab.NabFile], detector: Any) -> list[np.ndarray]:
    """Every file's scores, all files advancing together as in :func:`nab.run_corpus`."""
    lengths = np.array([len(f.values) for f in files])
    longest = int(lengths.max())
    values = np.zeros((len(files), longest))
    ts = np.zeros((len(files), longest))
    for k, f in enumerate(files):
        values[k, : lengths[k]] = f.values
        ts[k, : lengths[k]] = f.timestamps.astype("datetime64[ns]").astype(np.int64) / 1e9
    scores = np.zeros_like(values)
    every = np.arange(len(files))
    for i in range(longest):
        keys = every[lengths > i]
        scores[keys, i] = detector.score_learn_many(keys, values[keys, i], ts[keys, i])
    return [np.clip(scores[k, : lengths[k]], 0.0, 1.0) for k in range(len(files))]


def parts_of(files: list[nab.NabFile], scores: list[np.ndarray], idx: Sequence[int]) -> list[Any]:
    out, offset = [], 0
    for k in idx:
        part = nab.file_parts(files[k].timestamps, scores[k], files[k].windows, offset)
        offset += part.n_windows
        out.append(part)
    return out


def score_at(parts: list[Any], cost: dict[str, float], threshold: float) -> float:
    """Normalised score of ``parts`` at a given threshold (not optimised on them)."""
    n_windows = sum(p.n_windows for p in parts)
    raw = -cost["fn"] * n_windows
    for p in parts:
        hit = p.scores >= threshold
        raw += cost["fp"] * p.weight[hit & (p.window < 0)].sum()
        for w in np.unique(p.window[hit & (p.window >= 0)]):
            raw += cost["fn"] + cost["tp"] * p.weight[hit & (p.window == w)].max()
    return 100.0 * (raw + cost["fn"] * n_windows) / ((cost["tp"] + cost["fn"]) * n_windows)


def report(
    files: list[nab.NabFile],
    scores: list[np.ndarray],
    profiles: dict[str, dict[str, float]],
    splits: int,
) -> dict[str, Any]:
    every = range(len(files))
    total = nab.score_parts(parts_of(files, scores, every), profiles)
    standard = {"standard": profiles["standard"]}
    categories = {}
    for cat in sorted({f.name.split("/")[0] for f in files}):
        idx = [k for k, f in enumerate(files) if f.name.startswith(cat + "/")]
        parts = parts_of(files, scores, idx)
        if sum(p.n_windows for p in parts):
            categories[cat] = nab.score_parts(parts, standard)["standard"]["score"]
    rng = np.random.default_rng(0)
    transfer, optimum = [], []
    for _ in range(splits):
        order = rng.permutation(len(files))
        for fit, held in ((order[::2], order[1::2]), (order[1::2], order[::2])):
            thr = nab.score_parts(parts_of(files, scores, fit), standard)["standard"]["threshold"]
            held_parts = parts_of(files, scores, held)
            transfer.append(score_at(held_parts, profiles["standard"], thr))
            optimum.append(nab.score_parts(held_parts, standard)["standard"]["score"])
    out: dict[str, Any] = {
        "scores": {p: r["score"] for p, r in total.items()},
        "categories": categories,
    }
    if transfer:
        out["split_transfer"] = (float(np.mean(transfer)), float(np.min(transfer)))
        out["split_optimum"] = float(np.mean(optimum))
        out["splits"] = splits
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nab", type=Path, required=True, help="holds data/ and labels/")
    parser.add_argument("--detector", default="ensemble")
    parser.add_argument("--vary", default="", help="comma-separated numeric constants")
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument(
        "--reference", default="", help="comma-separated detectors in NAB's reference_results"
    )
    args = parser.parse_args(argv)
    files, profiles = corpus(args.nab)
    make = REGISTRY[args.detector]
    defaults = make()
    runs: list[tuple[str, dict[str, Any]]] = [("defaults", {})]
    for name in filter(None, args.vary.split(",")):
        value = getattr(defaults, name)
        for factor in (0.5, 1.5):
            scaled = type(value)(value * factor) if not isinstance(value, bool) else value
            runs.append((f"{name}={scaled!r}", {name: scaled}))
    for label, params in runs:
        det = make() if not params else type(defaults)(**{**defaults._get_params(), **params})
        show(label, report(files, run_scores(files, det), profiles, 0 if params else args.splits))
    # The published detectors, split the same way (the same seed) as the defaults.
    for name in filter(None, args.reference.split(",")):
        scores = reference_scores(files, args.nab / "reference_results", name)
        show(name, report(files, scores, profiles, args.splits))


def show(label: str, out: dict[str, Any]) -> None:
    line = " / ".join(f"{out['scores'][p]:.2f}" for p in nab.PROFILES)
    print(f"{label:28s} {line}")
    if "split_transfer" in out:
        cats = ", ".join(f"{c} {s:.2f}" for c, s in out["categories"].items())
        mean, low = out["split_transfer"]
        print(f"  categories (standard): {cats}")
        print(
            f"  split halves ({out['splits']}x2): threshold from the other half "
            f"{mean:.2f} (min {low:.2f}) vs own optimum {out['split_optimum']:.2f}"
        )


if __name__ == "__main__":
    main()
