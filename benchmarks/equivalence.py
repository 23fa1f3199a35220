"""Check that two versions of the scoring code give the same numbers, to the last bit.

Run the same awkward stream through one checkout's engine and detectors, dump every
score and every piece of learnt state, then compare two dumps::

    # with the code to compare against on PYTHONPATH (e.g. a `git archive` of main)
    cd /tmp && PYTHONPATH=/tmp/old python /path/to/benchmarks/equivalence.py dump old.npz
    cd /tmp && PYTHONPATH=/path/to/worktree python .../equivalence.py dump new.npz
    python benchmarks/equivalence.py compare old.npz new.npz

(Run it as a file, not with ``-m``, so that PYTHONPATH picks the checkout.) The stream
has shuffled rows, several event-time buckets per batch, late and repeated samples, new
series appearing mid-stream, gaps and silences, ramps, steps and spikes, and it is
driven both through ``ScoringEngine.process`` and through each detector directly (in key
order, i.e. the slice path, and shuffled subsets, i.e. the gather path).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np


def stream(seed: int = 0, n_nodes: int = 40, n_metrics: int = 6, steps: int = 420):
    """Batches of (node, metric, ts, value) columns exercising every engine path."""
    rng = np.random.default_rng(seed)
    size = n_nodes * n_metrics
    level = rng.uniform(0, 100, size)
    noise = rng.uniform(0.01, 3, size) * (rng.random(size) > 0.05)  # some flat series
    ramp = np.where(rng.random(size) < 0.1, rng.uniform(0.05, 0.5, size), 0.0)
    ramp_start = rng.integers(steps // 4, steps, size)
    quiet = {*range(steps // 8, steps // 8 + 3), *range(steps // 2 + 3, steps // 2 + 6)}
    born = np.where(rng.random(size) < 0.2, rng.integers(1, steps // 2, size), 0)
    drop = rng.random(size) < 0.1  # series that drop more and more samples later on
    nodes = np.repeat(np.array([f"n{i:03d}" for i in range(n_nodes)], dtype=object), n_metrics)
    metrics = np.tile(np.array([f"m{j}" for j in range(n_metrics)], dtype=object), n_nodes)
    step = 0
    while step < steps:
        span = int(rng.choice([1, 1, 1, 2, 3]))  # several buckets per batch at times
        parts = []
        for s in range(step, min(step + span, steps)):
            alive = born <= s
            alive &= ~(drop & (s > steps // 2) & (rng.random(size) < (s - steps // 2) / steps))
            if s in quiet:  # a silence of one node group
                alive &= np.arange(size) % 7 != 3
            idx = np.flatnonzero(alive)
            t = 1_764_115_200.0 + 10.0 * s + rng.uniform(0, 2, len(idx))
            x = level[idx] + noise[idx] * rng.normal(0, 1, len(idx))
            x += ramp[idx] * np.maximum(s - ramp_start[idx], 0)
            x += np.where(rng.random(len(idx)) < 0.003, rng.normal(0, 50, len(idx)), 0.0)
            x += np.where(s > 300, 5.0 * (idx % 11 == 0), 0.0)  # a step that stays
            parts.append((idx, t, x))
        idx = np.concatenate([p[0] for p in parts])
        t = np.concatenate([p[1] for p in parts])
        x = np.concatenate([p[2] for p in parts])
        if step > 5 and rng.random() < 0.3:  # late and repeated samples
            late = rng.choice(len(idx), size=max(1, len(idx) // 20))
            idx = np.concatenate([idx, idx[late]])
            t = np.concatenate([t, t[late] - rng.choice([0.0, 15.0, 40.0], len(late))])
            x = np.concatenate([x, x[late] + 1.0])
        if rng.random() < 0.5:
            order = rng.permutation(len(idx))
            idx, t, x = idx[order], t[order], x[order]
        yield nodes[idx], metrics[idx], t, x
        step += span


def state_of(obj: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
    """Every learnt array of a detector (attributes ending in ``_``), recursively."""
    for name, value in sorted(vars(obj).items()):
        if not name.endswith("_"):
            continue
        if isinstance(value, np.ndarray):
            # Layouts that changed for speed, compared in the old one.
            if name == "columns_":  # Sustained's state, once one row per series
                name, value = "state_", value.T
            if name == "profile_":  # SeasonalNovelty's tables, once (series, phase)
                for legacy, table in zip(
                    ("vmean_", "vvar_", "dmean_", "dvar_"), value, strict=True
                ):
                    out[f"{prefix}.{legacy}"] = table.T
                continue
            if name == "visits_":
                name, value = "seen_", value.T
            out[f"{prefix}.{name}"] = value
        elif hasattr(value, "__dict__"):
            state_of(value, f"{prefix}.{name}", out)


@contextlib.contextmanager
def _block_rows(size: int | None) -> Iterator[None]:
    """Run with ``BLOCK_ROWS = size`` where the checkout has blocks (else as it is)."""
    from predictor.detectors import base

    default = getattr(base, "BLOCK_ROWS", None)
    if size is None or default is None:
        yield
        return
    base.BLOCK_ROWS = size
    try:
        yield
    finally:
        base.BLOCK_ROWS = default


def run_engine(settings: Any, batches: Iterable[tuple], prefix: str, out: dict) -> None:  # type: ignore[type-arg]
    """Every score, risk and learnt array of an engine fed ``batches``."""
    from predictor.ingest.batch import SampleBatch
    from predictor.scoring import ScoringEngine

    engine = ScoringEngine(settings=settings)
    scores, risk, why = [], [], []
    for node, metric, t, x in batches:
        result = engine.process(SampleBatch.from_columns(node, metric, t, x))
        scores.append(result.sample_scores)
        frame = result.risk.sort_values(["node", "ts"], kind="stable")
        risk.append(frame[["risk", "online", "trend"]].to_numpy(dtype=float).ravel())
        why.extend(repr(w) for w in frame["why"])  # repr keeps every float's bits
    out[f"{prefix}.scores"] = np.concatenate(scores)
    out[f"{prefix}.risk"] = np.concatenate(risk)
    out[f"{prefix}.why"] = np.array(why)
    st = engine.state
    n = st.n_series
    out[f"{prefix}.series_score"] = st.series_score[:n]
    out[f"{prefix}.series_evidence"] = st.series_evidence[:n]
    out[f"{prefix}.features"] = st.features.values_[:n]
    columns = getattr(st.features, "columns_", None)  # once row-major ``state_``
    out[f"{prefix}.feature_state"] = st.features.state_[:n] if columns is None else columns[:, :n].T
    for i, det in enumerate(st.detectors + st.evidence_detectors):
        state_of(det, f"{prefix}.det{i}", out)


def dump(path: str) -> None:
    from predictor.config import Settings
    from predictor.detectors import REGISTRY, make_detector

    out: dict[str, np.ndarray] = {}
    scenarios = {
        # Small blocks (where the code has them) so that a small fleet crosses block edges.
        "small": ({"n_nodes": 40, "n_metrics": 6, "steps": 420}, 16),
        # A fleet larger than one block at the real block size.
        "fleet": ({"seed": 2, "n_nodes": 2000, "n_metrics": 20, "steps": 30}, None),
    }
    for scenario, (params, block_rows) in scenarios.items():
        for detectors in (["ewma_z"], ["ensemble"]):
            prefix = f"{scenario}.engine[{'+'.join(detectors)}]"
            with _block_rows(block_rows):
                run_engine(Settings(online_detectors=detectors), stream(**params), prefix, out)

    # Each detector on its own: full key-ordered batches (slice path), shuffled subsets
    # (gather path) and score_many probes that must not learn.
    rng = np.random.default_rng(1)
    n_series, steps = 64, 360
    level = rng.uniform(-5, 50, n_series)
    for name in sorted(set(REGISTRY) - {"river_hst"}):
        det = make_detector(name)
        scores = []
        for s in range(steps):
            keys = np.arange(n_series) if s % 4 else np.sort(rng.choice(n_series, 40, False))
            if s % 5 == 0:
                keys = rng.permutation(keys)
            if s > 200 and s % 3 == 0:
                keys = keys[keys % 5 != 1]  # gaps for some series
            x = (
                level[keys]
                + rng.normal(0, 1, len(keys))
                + 0.2 * np.maximum(s - 250, 0) * (keys % 4 == 0)
            )
            t = 60.0 * s + rng.uniform(0, 5, len(keys))
            if s % 7 == 0:
                scores.append(det.score_many(keys, x + 3.0, t))
            scores.append(det.score_learn_many(keys, x, t))
        out[f"{name}.scores"] = np.concatenate(scores)
        state_of(det, name, out)
    np.savez(path, **out)
    import predictor

    print(f"dumped {len(out)} arrays from {predictor.__file__} to {path}")


def compare(old_path: str, new_path: str) -> int:
    old, new = np.load(old_path), np.load(new_path)
    bad = sorted(set(old.files) ^ set(new.files))
    for name in bad:
        print(f"only in one dump: {name}")
    for name in sorted(set(old.files) & set(new.files)):
        a, b = old[name], new[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            print(f"{name}: shape/dtype {a.shape} {a.dtype} != {b.shape} {b.dtype}")
            bad.append(name)
        elif not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
            if a.dtype.kind in "fiub":
                diff = np.nanmax(np.abs(a.astype(float) - b.astype(float)))
                print(f"{name}: differs, max |diff| {diff:.3g}")
            else:
                print(f"{name}: differs in {int((a != b).sum())} of {a.size}")
            bad.append(name)
    print(f"{len(old.files)} arrays compared, {len(bad)} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1] == "dump":
        dump(sys.argv[2])
    else:
        sys.exit(compare(sys.argv[2], sys.argv[3]))
