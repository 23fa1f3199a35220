"""The scoring loop: exactly-once folding, checkpoints, replay after a crash."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from predictor.config import Settings
from predictor.ingest import SampleBatch
from predictor.service import Runtime


def history(steps: int, start: int = 0, nodes: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(start)
    rows = [
        (f"n{n}", m, 60.0 * k, v + rng.normal(0, 0.02) + (0.5 if (k % 37 == 0 and n == 1) else 0))
        for k in range(start, start + steps)
        for n in range(nodes)
        for m, v in (("cpu", 0.3), ("mem", 0.6))
    ]
    return pd.DataFrame(rows, columns=["node", "metric", "ts", "value"])


def latest_risk(runtime: Runtime) -> dict[str, float]:
    return {n: round(r["risk"], 12) for n, r in runtime.scorer.latest.items()}


def test_restart_restores_checkpoint_and_replays_the_rest(settings: Settings) -> None:
    first, second = history(80), history(80, start=80)

    reference = Runtime.build(
        settings.model_copy(
            update={
                "db": settings.db.with_name("ref.db"),
                "state_path": settings.db.with_name("ref.joblib"),
            }
        )
    )
    for part in (first, second):
        reference.store.append_samples(SampleBatch.from_frame(part))
    reference.scorer.drain_backlog(limit=500)

    crashed = Runtime.build(settings)
    crashed.store.append_samples(SampleBatch.from_frame(first))
    crashed.scorer.drain_backlog(limit=500)
    crashed.scorer.checkpoint()
    crashed.store.append_samples(SampleBatch.from_frame(second))
    crashed.scorer.step(limit=300)  # scored a little past the checkpoint, then "crashed"
    crashed.store.close()

    restarted = Runtime.build(settings)
    assert restarted.scorer.scored_rowid == 80 * 6  # back at the checkpoint
    restarted.scorer.drain_backlog(limit=500)
    assert restarted.scorer.lag_rows() == 0
    assert latest_risk(restarted) == latest_risk(reference)
    # Replayed risk points were rewritten, not duplicated.
    history_points = restarted.store.risk_history("n1")
    assert history_points["ts"].is_unique
    assert len(history_points) == len(reference.store.risk_history("n1"))
    for rt in (reference, restarted):
        rt.store.close()


def test_every_sample_is_folded_in_once(settings: Settings) -> None:
    runtime = Runtime.build(settings)
    data = history(50)
    for _, step in data.groupby("ts"):
        runtime.store.append_samples(SampleBatch.from_frame(step))
    folded = runtime.scorer.drain_backlog(limit=7)  # chunks that cut steps in half
    assert folded == len(data) == runtime.store.count_samples()
    assert runtime.scorer.step() == 0
    runtime.store.close()


def test_going_live_forgets_dry_run_drains(settings: Settings) -> None:
    runtime = Runtime.build(settings)
    with runtime.store.transaction() as conn:
        conn.execute(
            "INSERT INTO actions (id, ts, node, pool, action, reason, risk, executed, dry_run,"
            " status, detail, wall_ts) VALUES (1, 0, 'a', 'p', 'drain', 'r', 0.9, 0, 1,"
            " 'dry-run', '', 0)"
        )
        conn.execute("INSERT INTO node_state VALUES ('a', 'drained', 0, 1)")
    runtime.store.close()
    still_dry = Runtime.build(settings)
    assert "a" in still_dry.store.node_states()
    still_dry.store.close()
    live = Runtime.build(settings.model_copy(update={"dry_run": False}))
    assert live.store.node_states() == {}
    live.store.close()


def test_an_unusable_checkpoint_is_ignored_and_the_log_replayed(settings: Settings) -> None:
    runtime = Runtime.build(settings)
    runtime.store.append_samples(SampleBatch.from_frame(history(20)))
    runtime.scorer.drain_backlog()
    expected = latest_risk(runtime)
    runtime.store.close()
    settings.checkpoint_path.write_bytes(b"not a checkpoint")
    restarted = Runtime.build(settings)
    assert restarted.scorer.scored_rowid == 0
    restarted.scorer.drain_backlog()
    assert latest_risk(restarted) == expected
    restarted.store.close()


def test_a_restart_runs_the_detectors_the_settings_name_now(settings: Settings) -> None:
    runtime = Runtime.build(settings)
    runtime.store.append_samples(SampleBatch.from_frame(history(20)))
    runtime.scorer.drain_backlog()
    runtime.scorer.checkpoint()
    seen = runtime.scorer.engine.state.detectors[0].count_.copy()
    runtime.store.close()
    restarted = Runtime.build(
        settings.model_copy(update={"online_detectors": ["ewma_z", "range_break"]})
    )
    ewma_z, range_break = restarted.scorer.engine.state.detectors
    np.testing.assert_array_equal(ewma_z.count_, seen)  # the checkpoint's, kept
    assert type(range_break).__name__ == "RangeBreak" and not range_break.count_.any()
    restarted.store.append_samples(SampleBatch.from_frame(history(5, start=20)))
    assert restarted.scorer.drain_backlog() == 5 * 6
    assert range_break.count_[:6].tolist() == [5] * 6
    restarted.store.close()


def test_a_runtime_on_postgresql_scores_and_records_latest_risk(
    settings: Settings, pg_url: str
) -> None:
    """PREDICTOR_DATABASE_URL=postgresql://... : the same loop over the shared store."""
    from predictor.store.postgres import PostgresStore

    runtime = Runtime.build(settings.model_copy(update={"database_url": pg_url}))
    try:
        assert isinstance(runtime.store, PostgresStore)
        data = history(40)
        for _, step in data.groupby("ts"):
            runtime.store.append_samples(SampleBatch.from_frame(step))
        assert runtime.scorer.drain_backlog(limit=50) == len(data)
        latest = {r["node"]: r for r in runtime.store.latest_risk()}
        assert set(latest) == {"n0", "n1", "n2"}
        for node, point in runtime.scorer.latest.items():
            assert latest[node]["ts"] == point["ts"]
            assert latest[node]["risk"] == pytest.approx(point["risk"])
    finally:
        runtime.store.close()


def test_risk_history_can_be_thinned_while_the_latest_risk_stays_complete(
    settings: Settings,
) -> None:
    data = history(12)  # 12 evaluations a minute apart per node
    full = Runtime.build(settings)
    thin = Runtime.build(
        settings.model_copy(
            update={"db": settings.db.with_name("thin.db"), "risk_history_every_s": 300.0}
        )
    )
    for runtime in (full, thin):
        runtime.store.append_samples(SampleBatch.from_frame(data))
        runtime.scorer.drain_backlog()
    for node in ("n0", "n1", "n2"):
        kept = thin.store.risk_history(node)["ts"].tolist()
        assert kept == [t for t in full.store.risk_history(node)["ts"].tolist() if t % 300 < 10]
        assert len(kept) < len(full.store.risk_history(node))
    assert thin.store.latest_risk() == full.store.latest_risk()


def test_retention_forgets_scored_history_and_scoring_goes_on(settings: Settings) -> None:
    runtime = Runtime.build(settings.model_copy(update={"retention_days": 1.0}))
    assert runtime.scorer is not None
    day = history(24 * 60, nodes=2)  # one day a minute apart, starting at ts 0
    for offset in (0.0, 86_400.0, 2 * 86_400.0):
        shifted = day.assign(ts=day["ts"] + offset)
        runtime.store.append_samples(SampleBatch.from_frame(shifted))
        runtime.scorer.drain_backlog()
    assert runtime.scorer.forget_old() >= 1
    kept = runtime.store.samples_frame()
    assert kept["ts"].min() >= runtime.scorer.engine.fleet_now() - 2 * 86_400.0
    runtime.store.append_samples(SampleBatch.from_frame(day.assign(ts=day["ts"] + 3 * 86_400.0)))
    assert runtime.scorer.drain_backlog() == len(day)  # new samples are still scored
