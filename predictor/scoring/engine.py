"""Per-node scoring: samples -> features -> online detectors + batch model -> risk + why.

Fusion (all scores in [0, 1], higher = more risk):

- ``online``  = the highest per-series online score among the node's metrics (a failing
  node rarely misbehaves on every metric at once, so averaging would hide it);
- ``anomaly`` = ``(1 - batch_weight) * online + batch_weight * isolation_forest``;
- ``evidence`` = the highest per-series score of the *evidence* detectors
  (``settings.evidence_detectors``, e.g. a sustained trend): they accumulate evidence
  over time rather than flag single samples;
- ``risk``    = ``anomaly`` without a failure classifier, otherwise the noisy-OR
  ``1 - (1 - p_counted) * (1 - anomaly_weight_with_classifier * anomaly)``: a trained
  P(failure within H) leads, and an anomaly alone can raise risk only part of the way.
  ``p_counted = p_fail * min(1, evidence / classifier_evidence_gate)``: the classifier
  learnt from other nodes, so it drains a node only once the node's own series agree;
- evidence enters risk at full weight: ``max(risk, evidence)`` (not a noisy-OR: a spike
  on the same series would count twice).

``why`` lists the node's metrics that contribute most, and ``trend`` is the risk minus its
recent exponentially weighted mean (positive = rising).

Nodes are evaluated once per event-time bucket of ``eval_step_s`` in which they report,
so replaying history at full speed gives the decisions the live service would have made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd

from predictor.config import Settings
from predictor.detectors import OnlineDetector, make_detector
from predictor.detectors.base import carry_learnt, grow
from predictor.features import FEATURES, OnlineFeatures
from predictor.features.node import assemble
from predictor.ingest.batch import SampleBatch
from predictor.training.model import BatchModel

WHY_TOP = 3
TREND_ALPHA = 0.1
_Z = FEATURES.index("robust_z")
_GAP = FEATURES.index("gap")
_RUN_PROBE = 256  # leading samples that tell whether a column comes in runs
INTERVAL_ALPHA = 0.05  # EW weight of a series' scrape interval (see _fold_evidence)
SILENCE_STEPS = 5  # evidence steps without a sample after which a series restarts


@dataclass
class StepResult:
    """What one ``process`` call produced."""

    sample_scores: np.ndarray  # per input row: the online anomaly score (0 if out of order)
    risk: (
        pd.DataFrame
    )  # one row per node evaluation: node, ts, risk, online, batch, p_fail, trend, why


@dataclass
class EngineState:
    """Everything the engine learnt; checkpointed with joblib."""

    n_series: int = 0
    node_ids: dict[str, int] = field(default_factory=dict)
    metric_ids: dict[str, int] = field(default_factory=dict)
    # Series looked up by the packed key node_id << 32 | metric_id, kept sorted.
    packed_sorted: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    packed_key: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    series_node: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    series_metric: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    series_score: np.ndarray = field(default_factory=lambda: np.zeros(0))
    series_evidence: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # When each series last fed its evidence detectors (see evidence_step_s), its samples
    # since, and its own scrape interval.
    series_evidence_ts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    series_unfed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    series_interval: np.ndarray = field(default_factory=lambda: np.zeros(0))
    node_ts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    node_risk: np.ndarray = field(default_factory=lambda: np.zeros(0))
    node_risk_mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    features: OnlineFeatures = field(default_factory=OnlineFeatures)
    detectors: list[OnlineDetector] = field(default_factory=list)
    evidence_detectors: list[OnlineDetector] = field(default_factory=list)
    scored_rowid: int = 0

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Checkpoints from before evidence_step_s: every series may feed its next sample.
        if "series_evidence_ts" not in state:
            state["series_evidence_ts"] = np.full(len(state["series_evidence"]), -np.inf)
        # Checkpoints from before evidence was fed by samples received: intervals unknown.
        if "series_interval" not in state:
            size = len(state["series_evidence"])
            state["series_unfed"] = np.zeros(size, dtype=np.int64)
            state["series_interval"] = np.zeros(size)
        # Checkpoints from before series were counted, not kept in a dict by name: each
        # series' metric becomes its id.
        if "series_ids" in state:
            state["n_series"] = len(state.pop("series_ids"))
            metric_ids = state["metric_ids"]
            state["series_metric"] = np.array(
                [metric_ids[m] for m in state["series_metric"]], dtype=np.int64
            )
        self.__dict__.update(state)


class ScoringEngine:
    """Turns columnar sample batches into per-sample scores and per-node risk."""

    def __init__(self, *, settings: Settings, model: BatchModel | None = None):
        self.settings = settings
        self.state = EngineState(
            detectors=[make_detector(n) for n in settings.online_detectors],
            evidence_detectors=[make_detector(n) for n in settings.evidence_detectors],
        )
        self.model: BatchModel | None = None
        self.set_model(model)

    def adopt(self, state: EngineState) -> list[str]:
        """Go on from a checkpoint's state with the detectors the settings name now.

        Each detector takes today's parameters and what the checkpoint's detector of its
        class learnt, so a default changed by an upgrade, or a changed detector list,
        takes effect at restart rather than never. Returns the names that start afresh:
        new to the list, or learnt under another layout (see ``carry_learnt``).
        """
        s = self.settings
        state.detectors, afresh = _carried(s.online_detectors, state.detectors)
        state.evidence_detectors, evidence_afresh = _carried(
            s.evidence_detectors, state.evidence_detectors
        )
        self.state = state
        return afresh + evidence_afresh

    # -- model -----------------------------------------------------------------------
    def set_model(self, model: BatchModel | None) -> None:
        self.model = model
        self._slots = {m: i for i, m in enumerate(model.metrics)} if model else {}

    # -- series bookkeeping ----------------------------------------------------------
    def _keys(self, batch: SampleBatch) -> tuple[np.ndarray, np.ndarray]:
        """Dense series keys and node ids for every row, registering new ones.

        Names are factorized once per batch (node names once per run of rows) and looked
        up once per distinct name; series are then found by an integer search, not a
        Python loop per (node, metric) pair.
        """
        st = self.state
        node_codes, node_uniques = _factorize(batch.node)
        metric_codes, metric_uniques = _factorize(batch.metric)
        node_id_of = _ids(st.node_ids, node_uniques.tolist())
        metric_id_of = _ids(st.metric_ids, metric_uniques.tolist())
        packed = (node_id_of[node_codes] << 32) | metric_id_of[metric_codes]
        # Known series by one search per row; only the rows of new ones are factorized
        # (in order of first appearance, which numbers them).
        keys = np.empty(len(packed), dtype=np.int64)
        if len(st.packed_sorted):
            pos = np.searchsorted(st.packed_sorted, packed)
            np.minimum(pos, len(st.packed_sorted) - 1, out=pos)
            found = st.packed_sorted[pos] == packed
            keys[found] = st.packed_key[pos[found]]
            missing = np.flatnonzero(~found)
        else:
            missing = np.arange(len(packed))
        if len(missing):
            new_codes, new = pd.factorize(packed[missing])
            new = np.asarray(new, dtype=np.int64)
            start = st.n_series
            new_keys = np.arange(start, start + len(new))
            keys[missing] = new_keys[new_codes]
            # Arrays only: a fleet's first scrape registers millions of series, too many
            # for a Python object per series.
            st.n_series = start + len(new)
            st.series_node = grow(st.series_node, st.n_series)
            st.series_node[start : st.n_series] = new >> 32
            st.series_metric = grow(st.series_metric, st.n_series)
            st.series_metric[start : st.n_series] = new & 0xFFFFFFFF
            packed_all = np.concatenate([st.packed_sorted, new])
            keys_all = np.concatenate([st.packed_key, new_keys])
            order = np.argsort(packed_all, kind="stable")
            st.packed_sorted, st.packed_key = packed_all[order], keys_all[order]
        n_series, n_nodes = st.n_series, len(st.node_ids)
        st.series_score = grow(st.series_score, n_series)
        st.series_evidence = grow(st.series_evidence, n_series)
        st.series_evidence_ts = grow(st.series_evidence_ts, n_series, fill=-np.inf)
        st.series_unfed = grow(st.series_unfed, n_series)
        st.series_interval = grow(st.series_interval, n_series)
        st.features.ensure(n_series)
        for name in ("node_ts", "node_risk", "node_risk_mean"):
            setattr(st, name, grow(getattr(st, name), n_nodes))
        return keys, st.series_node[keys]

    # -- processing ------------------------------------------------------------------
    def process(self, batch: SampleBatch) -> StepResult:
        """Score a batch (any order, any mix of nodes); returns scores and node risk."""
        scores = np.zeros(len(batch))
        if not len(batch):
            return StepResult(scores, _empty_risk())
        st = self.state
        keys, nodes = self._keys(batch)
        # Round r holds each node's r-th event-time bucket in this batch.
        rounds = _bucket_rounds(nodes, np.floor(batch.ts / max(self.settings.eval_step_s, 1e-9)))
        frames = []
        round_order = np.argsort(rounds, kind="stable")
        bounds = np.searchsorted(rounds[round_order], np.arange(rounds.max() + 2))
        for r in range(len(bounds) - 1):
            rows = round_order[bounds[r] : bounds[r + 1]]
            folded = self._fold(rows, keys, batch, scores)
            if len(folded):
                # A node whose samples were all late or repeated has nothing new to say:
                # re-evaluating it would move its trend on a resent batch.
                reported = np.flatnonzero(np.bincount(nodes[folded], minlength=len(st.node_ids)))
                frames.append(self._evaluate(reported, folded, nodes, batch.ts))
        if len(frames) > 1:
            risk = pd.concat(frames, ignore_index=True)
        else:
            risk = frames[0] if frames else _empty_risk()
        return StepResult(scores, risk)

    def _fold(
        self, rows: np.ndarray, keys: np.ndarray, batch: SampleBatch, out: np.ndarray
    ) -> np.ndarray:
        """Update features and detectors with ``rows``, one sample per series at a time.

        Returns the rows that were in event-time order (the others changed nothing).
        """
        st = self.state
        folded = []
        k = keys[rows]
        if len(k) > 1 and not (k[1:] > k[:-1]).all():
            # Sorting by series alone suffices while each series has one sample here; the
            # (series, ts) lexsort, far slower on floats, only when one has several.
            order = np.argsort(k, kind="stable")
            by_series = k[order]
            if (by_series[1:] == by_series[:-1]).any():
                order = np.lexsort((batch.ts[rows], k))
            rows, k = rows[order], k[order]
        rank = _rank_in_runs(k)
        n_ranks = int(rank.max()) + 1 if len(k) else 0
        for r in range(n_ranks):
            sub = rows if n_ranks == 1 else rows[rank == r]
            sk, sx, stt = keys[sub], batch.value[sub], batch.ts[sub]
            in_order = st.features.update(sk, sx, stt)
            sub, sk, sx, stt = sub[in_order], sk[in_order], sx[in_order], stt[in_order]
            if not len(sub):
                continue
            folded.append(sub)
            fused = np.zeros(len(sub))
            for detector in st.detectors:
                fused = np.maximum(fused, detector.score_learn_many(sk, sx, stt))
            out[sub] = fused
            st.series_score[sk] = fused
            if st.evidence_detectors:
                self._fold_evidence(sk, sx, stt)
        return np.concatenate(folded) if folded else np.zeros(0, dtype=np.int64)

    def _fold_evidence(self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray) -> None:
        """Feed the evidence detectors one sample per ~evidence_step_s of the series' scrapes.

        Counted in samples received, not in seconds: at a 10 s scrape every 6th sample is
        fed, and a scrape that goes missing delays the next feed, so the detectors see the
        gap they would see at a 60 s scrape (counted in seconds, a node dropping half its
        10 s scrapes would look almost regular to them).
        """
        st, step = self.state, self.settings.evidence_step_s
        if step > 0:
            # The features already hold the gap since the series' previous sample (0 at
            # its first): this runs after they learnt the sample.
            gap = st.features.values_[keys, _GAP]
            interval = st.series_interval[keys]
            known = interval > 0
            # The interval follows the gaps that are a scrape, not a miss; misses nudge it
            # up (2%), so an interval that really changed is learnt within a hundred
            # samples, while a patchy node's misses barely move it.
            scrape = known & (gap <= 1.5 * interval)
            interval[scrape] += INTERVAL_ALPHA * (gap[scrape] - interval[scrape])
            interval[known & ~scrape] *= 1.02
            first_gap = ~known & (gap > 0)
            interval[first_gap] = gap[first_gap]
            st.series_interval[keys] = interval
            unfed = st.series_unfed[keys] + 1
            # 0.9: a 60 s scrape that comes a little early is still fed. A series back from
            # a silence is fed at once: its detectors restart on the gap.
            fresh = unfed * interval >= 0.9 * step
            fresh |= ts - st.series_evidence_ts[keys] >= SILENCE_STEPS * step
            st.series_unfed[keys] = np.where(fresh, 0, unfed)
            if not fresh.all():
                keys, values, ts = keys[fresh], values[fresh], ts[fresh]
            st.series_evidence_ts[keys] = ts
        if not len(keys):
            return
        evidence = np.zeros(len(keys))
        for detector in st.evidence_detectors:
            evidence = np.maximum(evidence, detector.score_learn_many(keys, values, ts))
        st.series_evidence[keys] = evidence

    def _evaluate(
        self, node_ids: np.ndarray, rows: np.ndarray, nodes: np.ndarray, ts: np.ndarray
    ) -> pd.DataFrame:
        """Risk of ``node_ids`` after their latest samples."""
        st = self.state
        latest = np.full(len(st.node_ids), -np.inf)
        np.maximum.at(latest, nodes[rows], ts[rows])
        st.node_ts[node_ids] = np.maximum(st.node_ts[node_ids], latest[node_ids])

        series, local = self._series_of(node_ids)
        online = np.zeros(len(node_ids))
        np.maximum.at(online, local, st.series_score[series])

        batch_anomaly = np.zeros(len(node_ids))
        p_fail = np.full(len(node_ids), np.nan)
        if self.model is not None:
            X = self.node_features(node_ids, series, local)
            batch_anomaly = self.model.anomaly_score(X)
            probability = self.model.failure_probability(X)
            if probability is not None:
                p_fail = probability

        w = self.settings.batch_weight if self.model is not None else 0.0
        anomaly = (1 - w) * online + w * batch_anomaly
        evidence = np.zeros(len(node_ids))
        np.maximum.at(evidence, local, st.series_evidence[series])
        counted = np.nan_to_num(p_fail)
        gate = self.settings.classifier_evidence_gate
        if gate > 0:
            counted = counted * np.minimum(evidence / gate, 1.0)
        w_a = self.settings.anomaly_weight_with_classifier
        risk = np.where(np.isnan(p_fail), anomaly, 1 - (1 - counted) * (1 - w_a * anomaly))
        risk = np.maximum(risk, evidence)

        seen_before = st.node_risk_mean[node_ids] > 0
        trend = np.where(seen_before, risk - st.node_risk_mean[node_ids], 0.0)
        st.node_risk_mean[node_ids] += TREND_ALPHA * (risk - st.node_risk_mean[node_ids])
        st.node_risk[node_ids] = risk

        why = self._why(node_ids, series, local, p_fail, counted)
        names = np.array(list(st.node_ids), dtype=object)
        return pd.DataFrame(
            {
                "node": names[node_ids],
                "ts": st.node_ts[node_ids],
                "risk": risk,
                "online": online,
                "batch": batch_anomaly,
                "p_fail": p_fail,
                "trend": trend,
                "why": why,
            }
        )

    def _series_of(self, node_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The series of the (sorted) ``node_ids`` and each one's row among them."""
        st = self.state
        chosen = np.zeros(len(st.node_ids), dtype=bool)
        chosen[node_ids] = True
        series_node = st.series_node[: st.n_series]
        series = np.flatnonzero(chosen[series_node])
        # A chosen node's row among node_ids = how many chosen nodes precede it.
        row_of_node = np.cumsum(chosen) - 1
        return series, row_of_node[series_node[series]]

    def node_features(
        self,
        node_ids: np.ndarray,
        series: np.ndarray | None = None,
        local: np.ndarray | None = None,
    ) -> np.ndarray:
        """The batch model's input rows for ``node_ids`` (sorted), as of their latest sample."""
        st = self.state
        if series is None or local is None:
            series, local = self._series_of(node_ids)
        slot_of_metric = np.array([self._slots.get(m, -1) for m in st.metric_ids], dtype=np.int64)
        slots = slot_of_metric[st.series_metric[series]]
        return assemble(
            values=st.features.values_[series],
            last_ts=st.features.columns_[1, series],
            series_node=local,
            series_slot=slots,
            node_ts=st.node_ts[node_ids],
            n_metrics=len(self._slots),
        )

    def _why(
        self,
        node_ids: np.ndarray,
        series: np.ndarray,
        local: np.ndarray,
        p_fail: np.ndarray,
        counted: np.ndarray,
    ) -> list[list[dict[str, Any]]]:
        """The top contributing metrics of each node, most anomalous first, after the
        failure model (its P(fail) and the part of it the evidence gate counted)."""
        st = self.state
        # A metric counts by its stronger signal: a one-off anomaly or sustained evidence.
        strength = np.maximum(st.series_score, st.series_evidence)
        score = strength[series]
        z = st.features.values_[series, _Z]
        keep = _top_in_groups(local, len(node_ids), (-np.abs(z), -score), WHY_TOP)
        top = series[keep]
        metric_names = np.array(list(st.metric_ids), dtype=object)
        entries = [
            {"metric": metric, "score": s_score, "z": s_z, "value": value}
            for metric, s_score, s_z, value in zip(
                metric_names[st.series_metric[top]].tolist(),
                np.round(strength[top], 4).tolist(),
                np.round(st.features.values_[top, _Z], 2).tolist(),
                st.features.values_[top, 0].tolist(),
                strict=True,
            )
        ]
        # ``keep`` runs node by node: cut the entries at each node's end.
        ends = np.cumsum(np.bincount(local[keep], minlength=len(node_ids))).tolist()
        why = [entries[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
        for i in np.flatnonzero(~np.isnan(p_fail)).tolist():
            why[i].insert(
                0,
                {
                    "metric": "failure_model",
                    "score": round(float(p_fail[i]), 4),
                    "counted": round(float(counted[i]), 4),
                },
            )
        return why

    # -- queries ---------------------------------------------------------------------
    def node_names(self) -> list[str]:
        return list(self.state.node_ids)

    def fleet_now(self) -> float:
        """The latest event time seen anywhere in the fleet."""
        n = len(self.state.node_ids)
        return float(self.state.node_ts[:n].max()) if n else 0.0

    def node_last_ts(self) -> dict[str, float]:
        st = self.state
        return dict(zip(st.node_ids, st.node_ts[: len(st.node_ids)].tolist(), strict=True))


def _carried(names: list[str], old: list[OnlineDetector]) -> tuple[list[OnlineDetector], list[str]]:
    """Detectors made by ``names``, each with what the first unused detector of its class
    in ``old`` learnt; and the names of those that start afresh."""
    spare = list(old)
    detectors, afresh = [], []
    for name in names:
        made = make_detector(name)
        match = next((d for d in spare if type(d) is type(made)), None)
        carried = None if match is None else carry_learnt(made, match)
        if match is not None:
            spare.remove(match)
        if carried is None:
            afresh.append(name)
        detectors.append(made if carried is None else carried)
    return detectors, afresh


def _ids(registry: dict[str, int], names: list[str]) -> np.ndarray:
    """The id of each name, registering new names (in order) with the next free ids."""
    ids = np.fromiter(map(registry.get, names, repeat(-1)), dtype=np.int64, count=len(names))
    for i in np.flatnonzero(ids < 0).tolist():  # only the names seen for the first time
        ids[i] = registry.setdefault(names[i], len(registry))
    return ids


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pd.factorize``, hashing one string per run of equal neighbours when runs are long.

    Scrapers send a node's samples together, so the node column is mostly runs: comparing
    neighbours costs a fraction of hashing every string.
    """
    head = values[:_RUN_PROBE]
    if len(values) > _RUN_PROBE and 2 * int((head[1:] != head[:-1]).sum()) < len(head):
        starts = np.ones(len(values), dtype=bool)
        np.not_equal(values[1:], values[:-1], out=starts[1:])
        first = np.flatnonzero(starts)
        codes, uniques = pd.factorize(values[first])
        return np.repeat(codes, np.diff(first, append=len(values))), np.asarray(uniques)
    codes, uniques = pd.factorize(values)
    return codes, np.asarray(uniques)


def _rank_in_runs(groups: np.ndarray) -> np.ndarray:
    """Each element's position within its run of equal values (``groups`` sorted)."""
    starts = np.ones(len(groups), dtype=bool)
    starts[1:] = groups[1:] != groups[:-1]
    index = np.arange(len(groups))
    return index - np.maximum.accumulate(np.where(starts, index, 0))


def _top_in_groups(
    group: np.ndarray, n_groups: int, sort_keys: tuple[np.ndarray, ...], top: int
) -> np.ndarray:
    """Indices of each group's first ``top`` elements in ``np.lexsort(sort_keys)`` order.

    Groups come in ascending order, exactly as ``np.lexsort((*sort_keys, group))`` cut at
    ``top`` per group. Sorting each group in its own row of a NaN-padded matrix is many
    times faster than one lexsort over every element (padding sorts after real entries:
    NaN sorts last, and ties keep the real entry first).
    """
    width = int(np.bincount(group, minlength=n_groups).max()) if len(group) else 0
    if n_groups * width > 2 * len(group) + 1024:  # too ragged to pad: one flat sort
        order = np.lexsort((*sort_keys, group))
        return order[_rank_in_runs(group[order]) < top]
    in_order = len(group) < 2 or bool((group[1:] >= group[:-1]).all())
    if in_order and len(group) == n_groups * width:  # every group full: just reshape
        slot = np.arange(len(group)).reshape(n_groups, width)
        padded = [key.reshape(n_groups, width) for key in sort_keys]
    else:
        by_group = np.arange(len(group)) if in_order else np.argsort(group, kind="stable")
        row, col = group[by_group], _rank_in_runs(group[by_group])
        slot = np.full((n_groups, width), -1, dtype=np.int64)
        slot[row, col] = by_group
        padded = []
        for key in sort_keys:
            matrix = np.full((n_groups, width), np.nan)
            matrix[row, col] = key[by_group]
            padded.append(matrix)
    picked = np.take_along_axis(slot, np.lexsort(padded, axis=-1)[:, :top], axis=1)
    return picked[picked >= 0]


def _bucket_rounds(nodes: np.ndarray, bucket: np.ndarray) -> np.ndarray:
    """Each row's round: the rank of its bucket among its node's buckets in the batch."""
    if bucket.min() == bucket.max():  # the usual scrape: no sort needed
        return np.zeros(len(nodes), dtype=np.int64)
    bucket_code = np.unique(bucket, return_inverse=True)[1].reshape(-1)
    n_buckets = int(bucket_code.max()) + 1
    pairs, pair_of_row = np.unique(nodes * n_buckets + bucket_code, return_inverse=True)
    return _rank_in_runs(pairs // n_buckets)[pair_of_row.reshape(-1)]


def _empty_risk() -> pd.DataFrame:
    return pd.DataFrame(
        {c: [] for c in ("node", "ts", "risk", "online", "batch", "p_fail", "trend", "why")}
    )
