"""Breakout: a ramp past the series' range is reported earlier; its own sawtooth is not."""

from __future__ import annotations

import numpy as np
import pytest

from predictor.detectors import Breakout, Sustained
from predictor.detectors.breakout import _HI, _HI_AGE, _LO, _LO_AGE, _N
from tests.detectors.test_fast_paths import legacy
from tests.detectors.test_sustained import baseline, feed, feed_many


def first_alarm(scores: np.ndarray, level: float = 0.8) -> int:
    above = np.flatnonzero(scores >= level)
    return int(above[0]) if len(above) else len(scores)


def first_drain(scores: np.ndarray, level: float = 0.8) -> int:
    """Where the policy would drain: two samples in a row at ``level`` or above."""
    both = np.flatnonzero((scores[1:] >= level) & (scores[:-1] >= level))
    return int(both[0]) + 1 if len(both) else len(scores)


def test_a_ramp_past_the_range_is_reported_earlier_than_by_the_trend_alone() -> None:
    values = baseline(500)
    values[300:] += np.linspace(0, 1.0, 400)[:200]
    plain = feed(Sustained(clip=12.0), values)  # the inner evidence of Breakout
    # An envelope that stops learning as soon as evidence appears shows the gate best.
    early = feed(Breakout(hold=0.05), values)
    assert np.all(early >= plain)  # the trend score is the floor
    assert first_alarm(early) < min(first_alarm(plain), len(values))
    assert first_alarm(early) > 300  # and nothing before the ramp


def test_a_ramp_past_a_range_widened_by_a_step_breaks_out_within_the_noise() -> None:
    # A batch job held a higher level for an hour; hours later a slow leak climbs past
    # it. Half the range's width beyond its top is far more than the noise explains.
    for seed in range(3):
        values = baseline(1100, seed)
        values[200:260] += 0.15
        values[600:] += np.r_[np.linspace(0, 1.0, 350), np.ones(150)]
        by_noise = first_alarm(feed(Breakout(), values))
        assert 600 < by_noise < first_alarm(feed(Breakout(noise_margin=1e9), values))  # off


@pytest.mark.parametrize(
    ("onset", "older", "at_least_earlier"),
    [
        # Ten hours after the job: its top, held by nothing since, fades while ends
        # that took seventeen hours to fade (and never rested) still stood high.
        (760, {"shrink": 1e-3, "rest": 0, "near": 0}, 5),
        # Six hours after: it fades within about an hour of resting two; fading over
        # eight hours, it still stood a third of the way up.
        (500, {"shrink": 2e-3, "near": 0}, 8),
    ],
)
def test_an_excursion_hours_ago_no_longer_hides_a_ramp(
    onset: int, older: dict[str, float], at_least_earlier: int
) -> None:
    # A batch job doubled the level for an hour; hours later a ramp builds its evidence
    # while still under the job's top.
    earlier = 0
    for seed in range(8):
        values = baseline(onset + 600, seed)
        values[100:160] += 0.4
        values[onset:] += 1.2 * np.clip(np.arange(600) / 300, 0, 1) ** 1.5
        now = first_drain(feed(Breakout(), values))
        before = first_drain(feed(Breakout(**older), values))
        assert onset < now <= before, seed
        earlier += now < before
    assert earlier >= at_least_earlier


def test_a_ramp_whose_noise_grows_with_it_breaks_out_on_its_held_level() -> None:
    # p99 latency climbing to four times its level, its noise a share of the level: the
    # ramp's own noise widens the margin a single sample must clear, while the level it
    # holds is already well past the range by the series' long-run moves.
    onset, n = 580, 700
    rows = []
    for seed in range(20):
        values = 0.2 * np.exp(0.08 * np.random.default_rng(seed).standard_normal(n))
        values[onset:] *= 1 + 3 * (np.arange(n - onset) / (n - onset)) ** 1.5
        rows.append(values)
    ramps = np.stack(rows)
    now = [first_drain(s) for s in feed_many(Breakout(), ramps)]
    single = Breakout(held_noise_margin=1e9)  # single samples alone break out
    before = [first_drain(s) for s in feed_many(single, ramps)]
    assert all(onset < a <= b for a, b in zip(now, before, strict=True))
    assert sum(a < b for a, b in zip(now, before, strict=True)) >= 4


def test_a_sawtooth_inside_its_own_range_gets_no_earlier_alarm() -> None:
    n, period = 2400, 300
    values = baseline(n) + 0.2 * (np.arange(n) % period) / period
    plain = feed(Sustained(), values)
    # Once the series has shown a full cycle, its climbs stay inside an envelope whose
    # ends rest for a cycle.
    resting = feed(Breakout(rest=period), values)
    np.testing.assert_array_equal(resting[2 * period :], plain[2 * period :])
    # Where the top has faded since the last peak a climb breaks out, with the little
    # trend evidence a climb the series repeats builds.
    assert feed(Breakout(), values)[2 * period :].max() < 0.8


def test_a_slow_ramp_does_not_drag_the_range_along_once_its_evidence_counts() -> None:
    # A leak that starts slowly (progress ** 2.5) and pins the level at its top. While
    # its trend evidence already suffices for a breakout, an envelope still learning
    # its held levels follows it a few samples behind: single samples break out, a
    # drain waits.
    chased = stopped = 0
    for seed in range(6):
        values = baseline(400, seed)
        values[200:320] += 0.3 * np.linspace(0, 1, 120) ** 2.5
        values[320:] += 0.3
        early = first_drain(feed(Breakout(), values))
        late = first_drain(feed(Breakout(hold=0.4), values))
        assert 200 < early <= late, seed
        chased, stopped = chased + late, stopped + early
    assert stopped < chased


def test_a_leak_over_a_garbage_collection_sawtooth_is_drained() -> None:
    # Memory climbs for three hours and drops back (garbage collection); then a leak adds
    # its climb to the sawtooth's and pins memory at 100%. Its evidence stays below the
    # breakout's share while the envelope learns each new top a few samples behind, and
    # a slope reference that learnt the leak's climb meanwhile let the evidence fade:
    # with the reference learning on up to 0.4 of the threshold, 2 of these 12 leaks
    # went undrained (1 at 0.2) and 4 drained later. (Measured with each drop counted in
    # the noise at full size, which kept the floor up for an hour after every drop.)
    t = np.arange(3180)
    onset = len(t) - 168
    noise = 0.004 * np.stack(
        [np.random.default_rng(seed).standard_normal(len(t)) for seed in range(12)]
    )
    values = 0.651 + 0.2 * np.mod(t / 179 + 0.857, 1) + noise
    values += (1.02 - values) * np.clip((t - onset) / 168, 0, 1) ** 1.25
    values = np.minimum(values, 1.0)

    def drains(**sustained: float | None) -> list[int]:
        return [first_drain(s) for s in feed_many(Breakout(sustained=sustained), values)]

    full_size, before = drains(step_noise=None), drains(step_noise=None, freeze=0.4)
    assert all(onset < a <= b for a, b in zip(full_size, before, strict=True))
    assert sum(a < len(t) for a in full_size) > sum(b < len(t) for b in before)
    # Each drop counted in the noise only up to a few clips: every leak drains sooner.
    now = drains()
    assert all(onset < a < b for a, b in zip(now, full_size, strict=True))


def test_a_step_out_of_the_range_is_not_a_trend() -> None:
    values = baseline(600)
    values[300:400] += 0.5  # a batch job pins the level, then ends
    assert feed(Breakout(), values).max() < 0.8


def test_a_batch_job_with_a_noisy_plateau_is_no_breakout() -> None:
    # Latency under a batch job: a step up, noisier on top. Its first sample breaks the
    # range, and the plateau's noise keeps some trend evidence: the range must take the
    # plateau in rather than keep it broken out.
    # Held levels make the range take the plateau in a few samples late, and a noisy
    # sample then rarely scores 0.8 (3 of these 100 plateaus; 1 without the noise
    # margin): never twice in a row, which a drain needs (the policy's minimum duration
    # spans two samples at one a minute).
    plateaus_with_a_high_sample = 0
    for seed in range(100):
        rng = np.random.default_rng(seed)
        values = 0.5 * np.exp(0.08 * rng.standard_normal(500))
        values[400:445] = 0.9 * np.exp(0.08 * rng.standard_normal(45))
        scores = feed(Breakout(), values)
        assert first_drain(scores) == len(scores), seed
        plateaus_with_a_high_sample += first_alarm(scores) < len(scores)
    assert plateaus_with_a_high_sample < 5


def test_a_noisy_plateau_winding_down_in_two_steps_is_no_trend() -> None:
    # p99 latency as a batch job ends: its window drains in two steps back to the quiet
    # level. Each step stays in the slope for tens of samples while the noise floor
    # falls back to the quiet noise: read against the falling floor alone, the fall
    # counted again every sample and drained 3 of these 40 healthy series (a simulated
    # fleet's one false drain). Each move is read against the floor of its own time.
    # And the range's bottom, held just before the plateau, does not fade during it:
    # fading (no rest), it rose so far that the quiet level after it broke out below;
    # resting only since the noise last reached its very extreme, it faded too.
    faded_bottom_alarms = {"no rest": 0, "extreme only": 0}
    for seed in range(40):
        rng = np.random.default_rng(seed)
        values = 0.15 * np.exp(0.08 * rng.standard_normal(700))
        values[400:450] = 0.65 * np.exp(0.08 * rng.standard_normal(50))
        values[450:456] = 0.35 * np.exp(0.08 * rng.standard_normal(6))
        assert first_alarm(feed(Breakout(), values)) == len(values), seed
        for name, detector in (("no rest", Breakout(rest=0)), ("extreme only", Breakout(near=0))):
            faded_bottom_alarms[name] += first_alarm(feed(detector, values)) < len(values)
    assert min(faded_bottom_alarms.values()) > 0, faded_bottom_alarms


def test_a_short_blip_does_not_widen_the_range() -> None:
    # A deploy blip (two samples far above the level), then later a leak.
    values = baseline(700)
    values[400:] += np.r_[np.linspace(0, 1.0, 100), np.ones(200)]
    blipped = values.copy()
    blipped[300:302] += 1.0
    top = {}
    for name, detector, series in (
        ("plain", Breakout(), values),
        ("blipped", Breakout(), blipped),
        ("raw", Breakout(held_for=1), blipped),
    ):
        feed(detector, series[:350])
        top[name] = detector.state_[0, _HI]
    assert top["blipped"] == top["plain"]
    assert top["raw"] > top["plain"] + 0.5  # learnt from raw samples, the blip stays
    # So the leak breaks out of the range sooner than out of one widened by the blip.
    assert first_alarm(feed(Breakout(), blipped)) < first_alarm(feed(Breakout(held_for=1), blipped))


def test_a_checkpoint_from_before_held_levels_keeps_its_range() -> None:
    values = baseline(300)
    live = Breakout()
    feed(live, values)
    # No held_for nor noise_margin, and per series only count, bottom and top.
    envelope = [_N, _LO, _HI]
    restored = legacy(
        live,
        {"held_for": {}, "noise_margin": {}, "state_": {"state_": live.state_[:, envelope]}},
    )
    np.testing.assert_array_equal(restored.state_[:, envelope], live.state_[:, envelope])
    assert not restored.state_[:, [_LO_AGE, _HI_AGE]].any()  # both ends as just held
    ramp = baseline(200, seed=1) + np.r_[np.linspace(0, 1.0, 100), np.ones(100)]
    ts = 60.0 * np.arange(300, 500)
    assert first_alarm(feed(restored, ramp, ts)) == first_alarm(feed(live, ramp, ts)) < 200


def test_a_checkpoint_from_before_the_ends_rested_keeps_its_range() -> None:
    live = Breakout()
    feed(live, baseline(300))
    ages = [_LO_AGE, _HI_AGE]
    restored = legacy(
        live, {"rest": {}, "near": {}, "state_": {"state_": np.delete(live.state_, ages, 1)}}
    )
    # It goes on as it ran: every end fading, held only where the level reaches it.
    assert (restored.rest, restored.near) == (0, 0)
    expected = live.state_.copy()
    expected[:, ages] = 0  # both ends as just held
    np.testing.assert_array_equal(restored.state_, expected)
    ramp = baseline(200, seed=1) + np.r_[np.linspace(0, 1.0, 100), np.ones(100)]
    assert 0 < first_alarm(feed(restored, ramp, 60.0 * np.arange(300, 500))) < 200


def test_scoring_before_learning_matches_score_learn() -> None:
    values = baseline(300)
    values[200:] += np.linspace(0, 0.3, 100)
    a, b = Breakout(), Breakout()
    keys = np.array([0])
    for i, v in enumerate(values):
        x, t = np.array([v]), np.array([60.0 * i])
        assert a.score_many(keys, x, t)[0] == b.score_learn_many(keys, x, t)[0]
        a.learn_many(keys, x, t)


def test_a_node_climbing_back_after_a_reboot_is_no_breakout() -> None:
    # Memory after a reboot: silence, then a climb from below the range back to its level.
    values = baseline(600) + 0.2
    noise = 0.01 * np.random.default_rng(3).standard_normal(30)
    values[420:450] = np.linspace(0.2, 0.6, 30) + noise
    ts = 60.0 * np.arange(600)
    keep = np.ones(600, dtype=bool)
    keep[400:420] = False  # down for 20 minutes
    scores = feed(Breakout(), values[keep], ts[keep])
    assert scores.max() < 0.8
    # The same climb with the silence not read as a restart is a breakout (a series
    # never seen that low).
    no_restart = Breakout(sustained={"reset_gaps": 1e9})
    assert feed(no_restart, values[keep], ts[keep]).max() >= 0.8
