"""Tests of cldyn_ros.streams.controller: reward-penalty strength control and score averaging."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from cldyn_ros.streams.controller import ScoreAverager, StrengthController

PEAK = 0.7


def score(strength: float) -> float:
    """A unimodal downstream score with its peak at PEAK."""
    return 1.0 - (strength - PEAK) ** 2


def run(ctrl: StrengthController, n: int, noise: float = 0.0, seed: int = 0) -> list[float]:
    """Close the loop for n updates; the strengths used, the initial one included."""
    rng = np.random.default_rng(seed)
    used = [ctrl.strength]
    for _ in range(n):
        measured = score(used[-1]) + (rng.normal(0.0, noise) if noise else 0.0)
        used.append(ctrl.update(measured))
    return used


# --- protocol ---------------------------------------------------------------------------------

def test_first_update_is_a_baseline_then_a_trial_step():
    ctrl = StrengthController(strength=0.5, step=0.1)
    assert ctrl.phase == "baseline"
    assert ctrl.update(0.8) == pytest.approx(0.6)
    assert ctrl.best_score == 0.8 and ctrl.phase == "trial"


def test_reward_keeps_the_change_and_grows_the_step():
    ctrl = StrengthController(strength=0.5, step=0.1, reward_gain=1.5)
    ctrl.update(0.80)  # baseline at 0.5, trial 0.6
    nxt = ctrl.update(0.85)  # better: reward
    assert ctrl.step == pytest.approx(0.15)
    assert nxt == pytest.approx(0.75)  # 0.6 accepted, next trial in the same direction
    assert ctrl.direction == 1 and ctrl.best_score == 0.85
    assert ctrl.rewards == 1 and ctrl.reverts == 0
    assert ctrl.state()["accepted_strength"] == pytest.approx(0.6)


def test_reward_step_is_capped_at_max_step():
    ctrl = StrengthController(strength=0.0, step=0.2, max_step=0.25, reward_gain=2.0)
    ctrl.update(0.1)
    ctrl.update(0.2)
    assert ctrl.step == 0.25
    assert ctrl.strength == pytest.approx(0.45)


def test_penalty_reverts_reverses_and_shrinks_the_step():
    ctrl = StrengthController(strength=0.5, step=0.1, penalty_shrink=0.5)
    ctrl.update(0.80)  # baseline at 0.5, trial 0.6
    nxt = ctrl.update(0.70)  # worse: penalty
    assert nxt == 0.5  # reverted to the accepted strength
    assert ctrl.direction == -1 and ctrl.step == pytest.approx(0.05)
    assert ctrl.reverts == 1 and ctrl.rewards == 0
    assert ctrl.phase == "baseline"  # the accepted strength is measured again
    assert ctrl.update(0.79) == pytest.approx(0.45)  # then a trial the other way
    assert ctrl.best_score == 0.79


def test_penalty_step_is_floored_at_min_step():
    ctrl = StrengthController(strength=0.5, step=0.02, min_step=0.015)
    ctrl.update(0.8)
    ctrl.update(0.7)
    assert ctrl.step == 0.015


def test_change_within_tolerance_reverts_without_shrinking():
    ctrl = StrengthController(strength=0.5, step=0.1, tolerance=0.01)
    ctrl.update(0.80)
    assert ctrl.update(0.805) == 0.5  # +0.005 is no change
    assert ctrl.step == 0.1 and ctrl.direction == -1
    assert ctrl.rewards == 0 and ctrl.reverts == 1
    ctrl.update(0.80)  # baseline; trial 0.4
    ctrl.update(0.8101)  # beyond tolerance: reward
    assert ctrl.rewards == 1 and ctrl.step == pytest.approx(0.15)


def test_direction_reverses_at_a_bound():
    ctrl = StrengthController(strength=1.0, step=0.1, direction=1)
    assert ctrl.update(0.5) == pytest.approx(0.9)
    assert ctrl.direction == -1
    ctrl = StrengthController(strength=0.05, step=0.1, direction=-1)
    assert ctrl.update(0.5) == 0.0  # clamped partial step, direction kept
    assert ctrl.update(0.6) == pytest.approx(0.15)  # rewarded at the bound: turns around
    assert ctrl.direction == 1


def test_fixed_strength_when_bounds_coincide():
    ctrl = StrengthController(strength=0.3, min_strength=0.3, max_strength=0.3)
    for s in (0.1, 0.5, 0.2):
        assert ctrl.update(s) == 0.3
    assert ctrl.phase == "baseline"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_scores_are_ignored(bad):
    ctrl = StrengthController(strength=0.5)
    ctrl.update(0.8)
    before = ctrl.state()
    assert ctrl.update(bad) == before["strength"]
    after = ctrl.state()
    assert after.pop("ignored") == 1
    before.pop("ignored")
    assert after == before


def test_state_has_the_documented_keys():
    state = StrengthController().state()
    for key in ("strength", "step", "direction", "best_score", "last_score", "updates",
                "reverts"):
        assert key in state
    assert state["updates"] == 0 and state["best_score"] is None


def test_reset_restarts_the_search():
    ctrl = StrengthController(strength=0.5)
    ctrl.update(0.8)
    ctrl.reset(1.7)  # clamped
    assert ctrl.strength == 1.0 and ctrl.phase == "baseline" and ctrl.best_score is None
    ctrl.update(0.8)
    assert ctrl.strength == pytest.approx(0.9)
    ctrl.reset()
    assert ctrl.strength == 1.0
    with pytest.raises(ValueError):
        ctrl.reset(math.nan)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"strength": 1.5},
        {"min_strength": 0.8, "max_strength": 0.2, "strength": 0.5},
        {"step": 0.5},  # above max_step
        {"step": 0.005},  # below min_step
        {"min_step": 0.0, "step": 0.1},
        {"reward_gain": 0.9},
        {"penalty_shrink": 0.0},
        {"penalty_shrink": 1.5},
        {"tolerance": -0.1},
        {"direction": 0},
        {"strength": math.nan},
        {"step": "0.1"},
    ],
)
def test_invalid_settings_raise(kwargs):
    with pytest.raises(ValueError):
        StrengthController(**kwargs)


# --- convergence ------------------------------------------------------------------------------

@pytest.mark.parametrize("start", [0.0, 0.5, 1.0])
def test_converges_to_the_peak_and_stays(start):
    ctrl = StrengthController(strength=start)
    used = run(ctrl, 100)
    assert all(0.0 <= s <= 1.0 for s in used)
    assert all(abs(s - PEAK) < 0.1 for s in used[50:])
    assert abs(ctrl.state()["accepted_strength"] - PEAK) < 0.02
    assert ctrl.updates == 100


@pytest.mark.parametrize(("noise", "tolerance", "seed"),
                         [(0.001, 0.0, 0), (0.001, 0.0, 1), (0.002, 0.002, 2)])
def test_converges_with_noisy_scores(noise, tolerance, seed):
    ctrl = StrengthController(strength=0.2, tolerance=tolerance)
    used = run(ctrl, 100, noise=noise, seed=seed)
    assert all(0.0 <= s <= 1.0 for s in used)
    assert all(abs(s - PEAK) < 0.1 for s in used[50:])


def test_stays_within_narrow_bounds():
    ctrl = StrengthController(strength=0.2, min_strength=0.1, max_strength=0.4, step=0.1)
    used = run(ctrl, 100, noise=0.001)
    assert all(0.1 <= s <= 0.4 for s in used)
    assert all(s > 0.3 for s in used[50:])  # pushes against the bound nearest the peak


# --- averaging --------------------------------------------------------------------------------

def test_averager_window_and_per_task_mean():
    avg = ScoreAverager(window=4)
    assert not avg.is_ready and math.isnan(avg.mean()) and avg.pop_mean() is None
    for s in (0.2, 0.4, 0.6):
        assert avg.add("detection", s)
    assert avg.add("segmentation", 1.0)
    assert avg.is_ready and avg.count == 4
    assert avg.per_task() == pytest.approx({"detection": 0.4, "segmentation": 1.0})
    assert avg.mean() == pytest.approx(0.7)  # tasks weigh equally, not messages
    assert avg.pop_mean() == pytest.approx(0.7)
    assert avg.count == 0 and not avg.is_ready


def test_averager_ignores_non_finite_and_skips_after_reset():
    avg = ScoreAverager(window=2, skip=2)
    assert not avg.add("detection", 0.9)  # skipped
    assert not avg.add("detection", 0.9)  # skipped
    assert not avg.add("detection", math.nan)
    assert avg.add("detection", 0.5) and avg.add("detection", 0.7)
    assert avg.pop_mean() == pytest.approx(0.6)
    assert not avg.add("detection", 0.1)  # pop_mean resets: skipping again
    avg.reset()
    assert avg.count == 0


@pytest.mark.parametrize("kwargs", [{"window": 0}, {"window": 2.0}, {"skip": -1}])
def test_averager_invalid_settings_raise(kwargs):
    with pytest.raises(ValueError):
        ScoreAverager(**kwargs)


def test_averager_concurrent_feeding_loses_nothing():
    avg = ScoreAverager(window=1_000_000)

    def feed(task: str) -> None:
        for _ in range(5_000):
            avg.add(task, 1.0)

    threads = [threading.Thread(target=feed, args=(f"task{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert avg.count == 20_000


def test_closed_loop_with_averaged_noisy_feedback():
    # The node's loop: per fused image, two tasks report noisy scores; a window of 20
    # messages is averaged (noise / sqrt(10) per task) before each controller update.
    rng = np.random.default_rng(5)
    avg = ScoreAverager(window=20, skip=0)
    ctrl = StrengthController(strength=0.3)
    used = []
    while ctrl.updates < 100:
        s = ctrl.strength
        for task, offset in (("detection", 0.0), ("segmentation", -0.1)):
            avg.add(task, score(s) + offset + rng.normal(0.0, 0.005))
        mean = avg.pop_mean()
        if mean is not None:
            ctrl.update(mean)
            used.append(ctrl.strength)
    assert all(abs(s - PEAK) < 0.1 for s in used[50:])
