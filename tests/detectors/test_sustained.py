"""The sustained-evidence detector: ramps and growing gaps score, steps and spikes do not."""

from __future__ import annotations

import numpy as np
import pytest

from predictor.detectors import OnlineDetector, Sustained

STEP = 60.0


def feed(detector: Sustained, values: np.ndarray, ts: np.ndarray | None = None) -> np.ndarray:
    """Scores of one series fed sample by sample."""
    ts = STEP * np.arange(len(values)) if ts is None else ts
    key = np.array([0])
    return np.array(
        [
            detector.score_learn_many(key, np.array([v]), np.array([t]))[0]
            for v, t in zip(values, ts, strict=True)
        ]
    )


def feed_many(detector: OnlineDetector, values: np.ndarray) -> np.ndarray:
    """Scores of several series (rows) fed together, one sample of each a minute."""
    keys = np.arange(len(values))
    return np.column_stack(
        [
            detector.score_learn_many(keys, column, np.full(len(keys), STEP * i))
            for i, column in enumerate(values.T)
        ]
    )


def baseline(n: int, seed: int = 0) -> np.ndarray:
    return 0.4 + 0.01 * np.random.default_rng(seed).standard_normal(n)


def test_a_ramp_that_keeps_going_reaches_full_score() -> None:
    values = baseline(400)
    values[240:] += np.linspace(0, 0.5, 160)
    scores = feed(Sustained(), values)
    assert scores[:240].max() < 0.5
    assert scores[-1] == 1.0


def test_a_step_that_then_sits_still_and_a_spike_stay_low() -> None:
    values = baseline(400)
    values[200:260] += 0.3  # a batch job: up, flat, down
    values[320] += 1.0
    scores = feed(Sustained(), values)
    assert scores.max() < 0.5


@pytest.mark.parametrize("seed", range(5))
def test_a_noisier_plateau_and_the_step_back_stay_low(seed: int) -> None:
    # Latency under a batch job: the level jumps fourfold and, the noise being
    # multiplicative, so does the size of its moves; an hour later it drops back.
    level = np.full(700, 0.1)
    level[300:360] = 0.4
    noise = np.exp(0.08 * np.random.default_rng(seed).standard_normal(700))
    assert feed(Sustained(clip=12.0), level * noise).max() < 0.5


def test_a_fill_soon_after_a_log_rotation_builds_evidence_within_minutes() -> None:
    # A disk grows slowly and its log rotation drops it by hundreds of typical moves;
    # 15 minutes later it starts filling. The slope keeps no more of the drop than the
    # clip, and nor does the noise floor, so the fill is not read against the drop.
    minute = np.arange(900)
    rng = np.random.default_rng(0)
    values = 0.55 + 2e-4 * np.mod(minute, 600) + 5e-4 * rng.standard_normal(len(minute))
    fill_from = 615
    values[fill_from:] += 0.4 * ((minute[fill_from:] - fill_from) / 285) ** 2
    first = {}
    for name, detector in (("capped", Sustained()), ("full size", Sustained(step_noise=None))):
        scores = feed(detector, values)
        assert scores[:fill_from].max() < 0.1, name  # the drop itself is no trend
        first[name] = int(np.argmax(scores >= 0.25))
    assert fill_from < first["capped"] < first["full size"] - 15, first


@pytest.mark.parametrize("jump", [4, 8])
@pytest.mark.parametrize("width", [3, 5, 8])
def test_a_deploy_blip_reads_as_neither_a_rise_nor_a_fall(jump: int, width: int) -> None:
    # A few minutes at several times the level, the noise multiplicative: the jump up is
    # clipped, so the way back must not count for more than it.
    for seed in range(5):
        level = np.full(600, 0.1)
        level[400 : 400 + width] *= jump
        noise = np.exp(0.08 * np.random.default_rng(seed).standard_normal(600))
        assert feed(Sustained(clip=12.0), level * noise)[400:].max() < 0.2


@pytest.mark.parametrize("seed", range(5))
def test_a_deploy_during_a_batch_job_and_the_job_ending_stay_low(seed: int) -> None:
    # Latency: a batch job lifts it for an hour and a deploy blips it on top; the way
    # down from the blip and the job's end soon after are two steps down, no fall.
    level = np.full(700, 0.25)
    level[500:562] = 0.9
    level[530:537] *= 2.3
    noise = np.exp(0.08 * np.random.default_rng(seed).standard_normal(700))
    assert feed(Sustained(clip=12.0), level * noise)[500:].max() < 0.4


def test_a_ramp_the_series_always_shows_stays_low() -> None:
    # Sawtooth: climbs for 4 hours, drops back, again and again (log rotation).
    t = np.arange(1500)
    values = 0.5 + 0.3 * ((t % 240) / 240) + 0.002 * np.random.default_rng(1).standard_normal(1500)
    scores = feed(Sustained(), values)
    assert scores[600:].max() < 0.5


def test_growing_gaps_score_but_one_silence_does_not() -> None:
    rng = np.random.default_rng(2)
    n = 300
    ts = STEP * np.arange(n)
    keep = np.ones(n, dtype=bool)
    keep[150:155] = False  # one short silence (a reboot)
    healthy = feed(Sustained(), baseline(n)[keep], ts[keep])
    # A node back from a reboot is not kept at risk (drained, counted against its pool's
    # budget) by the gap it left.
    assert healthy.max() < 0.1
    patchy = np.ones(n, dtype=bool)
    patchy[200:] = rng.random(100) > np.linspace(0.2, 0.9, 100)
    scores = feed(Sustained(), baseline(n)[patchy], ts[patchy])
    assert scores[-1] == 1.0


def test_a_silence_counts_once_scrapes_keep_going_missing() -> None:
    n = 300
    ts = STEP * np.arange(n)
    keep = np.ones(n, dtype=bool)
    keep[150:155] = False  # a silence...
    keep[158] = False  # ...and, soon after the node is back, a dropped scrape
    scores = feed(Sustained(), baseline(n)[keep], ts[keep])
    back, dropped = np.searchsorted(ts[keep], [ts[155], ts[159]])
    assert scores[back:dropped].max() < 0.1
    lone = keep.copy()
    lone[150:155] = True  # the same dropped scrape without the silence before it
    lone_scores = feed(Sustained(), baseline(n)[lone], ts[lone])
    lone_dropped = int(np.searchsorted(ts[lone], ts[159]))
    # The silence's missed samples count after all.
    assert scores[dropped] > 1.5 * lone_scores[lone_dropped] > 0


def test_a_node_back_from_a_crash_that_misses_two_scrapes_is_not_drained() -> None:
    # A kernel panic: ten minutes silent, then, just back, one series misses two scrapes
    # in a row (a fresh fleet's one healthy node drained). The silence held back in full
    # (3 missed samples, the clip) and the gap after it (2) reached 0.82 of the threshold,
    # over the policy's 0.8 for the minutes the evidence takes to fade. Held back at half,
    # a silence and any one gap after it (at most the clip) stay under 0.8; a node that
    # keeps losing samples still drains.
    n = 300
    ts = STEP * np.arange(n)
    keep = np.ones(n, dtype=bool)
    keep[150:160] = False  # the crash
    keep[161:163] = False  # back, then two scrapes missed
    values, ts = baseline(n)[keep], ts[keep]
    assert feed(Sustained(), values, ts).max() < 0.8
    assert feed(Sustained(held_share=1.0), values, ts).max() >= 0.8
    keep[[166, 170]] = False  # two more scrapes missed soon after
    patchy = feed(Sustained(), baseline(n)[keep], STEP * np.arange(n)[keep])
    assert patchy.max() >= 0.8
