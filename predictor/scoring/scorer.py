"""The scoring loop: follow the store's sample log, score, decide, checkpoint."""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from dataclasses import fields
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from predictor.actuators import Actuator
from predictor.config import Settings
from predictor.ingest.batch import SampleBatch
from predictor.policy import Policy
from predictor.scoring.engine import EngineState, ScoringEngine
from predictor.scoring.latest import LatestRisk
from predictor.store import Store
from predictor.training.model import BatchModel

logger = logging.getLogger(__name__)
TRICKLE_WAIT_S = 0.05
SCORED_POSITION = "scored_position"  # meta key: how far a separate scorer process got


class Scorer:
    """Folds every committed sample into the engine, in ingest order, exactly once.

    The engine's ``scored_rowid`` is the position in the store's append-only sample log.
    A checkpoint saves it with the engine and policy state; after a crash the scorer
    restores the checkpoint and replays the log from there, so nothing acknowledged is
    skipped and risk points are rewritten, not duplicated.
    """

    def __init__(
        self,
        *,
        store: Store,
        engine: ScoringEngine,
        policy: Policy,
        checkpoint_path: Path | None = None,  # None: the caller keeps the snapshots
    ):
        self.store = store
        self.engine = engine
        self.policy = policy
        self.checkpoint_path = checkpoint_path
        self.latest = LatestRisk()  # node -> its latest risk row
        self.lock = threading.Lock()  # one step at a time (the thread, replays, tests)

    @classmethod
    def build(
        cls,
        *,
        settings: Settings,
        store: Store,
        actuator: Actuator,
        model: BatchModel | None = None,
        checkpoint_path: Path | None = None,
    ) -> Scorer:
        """A fresh engine and policy for ``settings``, scoring into ``store``."""
        return cls(
            store=store,
            engine=ScoringEngine(settings=settings, model=model),
            policy=Policy(settings=settings, store=store, actuator=actuator),
            checkpoint_path=checkpoint_path,
        )

    @property
    def scored_rowid(self) -> int:
        return self.engine.state.scored_rowid

    def lag_rows(self) -> int:
        return self.store.last_sample_rowid() - self.scored_rowid

    def step(self, limit: int = 200_000) -> int:
        """Score the next chunk of the log; return how many samples it held."""
        with self.lock:
            batch, last = self.store.samples_after(self.scored_rowid, limit)
            self.score(batch, position=last)
            return len(batch)

    def score(
        self, batch: SampleBatch, *, position: int, keep_history: bool = True
    ) -> pd.DataFrame:
        """Fold one batch in, store its risk, let the policy decide; return the risk rows.

        ``position`` is where the batch ends in the log it came from (the store's sample
        log here, a stream partition in a scorer worker); it is saved with the state.
        """
        result = self.engine.process(batch)
        if not result.risk.empty:
            if keep_history:
                self.store.append_risk(result.risk, history=self._history_rows(result.risk))
            self._remember(result.risk)
            self.policy.decide(
                result.risk,
                node_last_ts=self.engine.node_last_ts(),
                node_risk=self.latest.risk_by_node(),
            )
        self.engine.state.scored_rowid = position
        return result.risk

    def _history_rows(self, risk: pd.DataFrame) -> np.ndarray | None:
        """Rows kept in the risk history: with ``risk_history_every_s``, the evaluations in
        the first ``eval_step_s`` of each such period of event time (so a replay keeps the
        same ones); every row otherwise."""
        s = self.engine.settings
        if s.risk_history_every_s <= 0:
            return None
        return (risk["ts"].to_numpy(np.float64) % s.risk_history_every_s) < s.eval_step_s

    def forget_old(self) -> int:
        """Apply ``retention_days``: delete what is scored and older (event time)."""
        days = self.engine.settings.retention_days
        if days <= 0:
            return 0
        with self.lock:
            cutoff = self.engine.fleet_now() - days * 86400.0
            return self.store.forget_before(ts=cutoff, position=self.scored_rowid)

    def drain_backlog(self, limit: int = 200_000) -> int:
        """Score until the log is exhausted; return the samples scored."""
        total = 0
        while n := self.step(limit):
            total += n
        return total

    def _remember(self, risk: pd.DataFrame) -> None:
        self.latest = self.latest.updated(risk)  # swapped whole: readers never see half

    # -- checkpoints -------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """Engine and policy state, and the log position they cover, as bytes."""
        with self.lock:
            state = {
                "engine": self.engine.state,
                "policy": self.policy.export_state(),
                "latest": self.latest,
            }
            buffer = io.BytesIO()
            joblib.dump(state, buffer)
            return buffer.getvalue()

    def load_snapshot(self, data: bytes) -> None:
        """Restore what :meth:`snapshot` saved; ValueError if it cannot be used."""
        state = joblib.load(io.BytesIO(data))
        expected = {f.name for f in fields(EngineState)}
        if not expected <= set(vars(state["engine"])):
            raise ValueError("written by another version of the engine")
        with self.lock:
            afresh = self.engine.adopt(state["engine"])
            self.policy.import_state(state["policy"])
            self.latest = LatestRisk.of(state["latest"])  # older snapshots hold a dict
        if afresh:
            logger.warning("detectors starting afresh (new, or another layout): %s", afresh)

    def checkpoint(self) -> None:
        """Save the snapshot atomically to the checkpoint file (write, fsync, rename)."""
        path = self.checkpoint_path
        assert path is not None, "this scorer has no checkpoint file"
        data = self.snapshot()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def restore(self) -> bool:
        """Load the last checkpoint if there is one."""
        if self.checkpoint_path is None or not self.checkpoint_path.exists():
            return False
        try:
            self.load_snapshot(self.checkpoint_path.read_bytes())
        except Exception as exc:
            # Unusable state is not lost data: the sample log replays from the start.
            logger.warning("ignoring checkpoint %s (%s); replaying", self.checkpoint_path, exc)
            return False
        logger.info("restored online state at sample %d", self.scored_rowid)
        return True


class ScorerThread(threading.Thread):
    """Runs the scorer in the background until ``stop()``; checkpoints periodically."""

    def __init__(
        self,
        scorer: Scorer,
        *,
        checkpoint_every_s: float,
        chunk_rows: int,
        separate_process: bool = False,
    ):
        super().__init__(name="predictor-scorer", daemon=True)
        self.scorer = scorer
        self.checkpoint_every_s = checkpoint_every_s
        self.chunk_rows = chunk_rows
        # A scorer process beside `--role api` processes: nobody wakes it, so it polls the
        # log more often, and it stores its position for their lag check and /readyz.
        self.separate_process = separate_process
        self.idle_wait_s = 0.1 if separate_process else 0.5
        self.wake = threading.Event()
        self._stop_event = threading.Event()

    def run(self) -> None:
        last_checkpoint = time.monotonic()
        while not self._stop_event.is_set():
            try:
                scored = self.scorer.step(self.chunk_rows)
            except Exception:  # keep scoring alive; the error is in the log
                logger.exception("scoring step failed")
                scored = 0
                self._stop_event.wait(1.0)
            if scored and self.separate_process:
                self.scorer.store.set_meta(SCORED_POSITION, str(self.scorer.scored_rowid))
            if time.monotonic() - last_checkpoint >= self.checkpoint_every_s:
                self.scorer.checkpoint()
                self.scorer.forget_old()
                last_checkpoint = time.monotonic()
            if not scored:
                self.wake.wait(self.idle_wait_s)
                self.wake.clear()
            elif scored < self.chunk_rows:
                # Caught up on a trickle: let a few requests' samples gather, since every
                # step has fixed costs (risk rows, their commit, the policy) whatever its size.
                self._stop_event.wait(TRICKLE_WAIT_S)

    def stop(self) -> None:
        """Finish what was acknowledged, checkpoint, and end."""
        self._stop_event.set()
        self.wake.set()
        self.join(timeout=30)
        self.scorer.drain_backlog(self.chunk_rows)
        self.scorer.checkpoint()
