"""Closed-loop control of the compensation strength from downstream task scores.

CLDyN is trained with a reward-penalty scheme: compensation that helps the downstream tasks
(detection, segmentation) is rewarded, compensation that hurts them is penalised. At run
time the same idea closes the loop around the deployed network: downstream nodes publish a
score per fused image, :class:`ScoreAverager` averages them over a window, and
:class:`StrengthController` hill-climbs the compensation strength on the averaged score.

The two are deliberately separate: the averager decides *when* a score is reliable (enough
feedback messages, none left over from the previous strength), the controller only decides
*what* strength to try next. The node feeds feedback into the averager and, whenever
:meth:`ScoreAverager.pop_mean` returns a value, passes it to :meth:`StrengthController.update`
and applies the strength it returns.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ScoreAverager", "StrengthController"]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class StrengthController:
    """Reward-penalty hill climbing of the compensation strength.

    The controller alternates between two kinds of measurements:

    1. *Baseline*: the score at the accepted strength becomes ``best_score``; the controller
       then proposes the trial strength ``strength + direction * step`` (clamped to the
       bounds; at a bound the direction reverses first).
    2. *Trial*: the score at the trial strength is compared with ``best_score``:

       - it rose by more than ``tolerance`` (the **reward**): the trial strength is accepted,
         ``best_score`` becomes its score, ``step *= reward_gain`` (at most ``max_step``) and
         the next trial goes on in the same direction;
       - it fell by more than ``tolerance`` (the **penalty**): the controller reverts to the
         accepted strength, reverses direction and ``step *= penalty_shrink`` (at least
         ``min_step``); the next score is a new baseline;
       - otherwise (no change): it reverts and reverses likewise but keeps the step.

    Reverting re-measures the baseline, so a score that was lucky under noise, or a scene
    that changed, cannot lock the controller at a stale ``best_score``. On a unimodal score
    function it converges to the peak and then keeps probing either side of it with steps
    near ``min_step``, which also lets it follow a peak that drifts.

    NaN and infinite scores (e.g. no feedback in a window) are ignored. Not thread-safe: call
    :meth:`update` from one place (the node's feedback callback). To override the strength
    (e.g. from a parameter), call :meth:`reset` rather than assigning ``strength``, which
    would leave the accepted strength behind.

    Raises:
        ValueError: in construction, on inconsistent bounds, steps or gains.

    Example:
        >>> ctrl = StrengthController(strength=0.5, step=0.1)
        >>> ctrl.update(0.80)  # baseline at 0.5; try 0.6
        0.6
        >>> ctrl.update(0.85)  # better: keep 0.6, try 0.75 with a larger step
        0.75
    """

    strength: float = 0.5
    min_strength: float = 0.0
    max_strength: float = 1.0
    step: float = 0.1
    min_step: float = 0.01
    max_step: float = 0.3
    reward_gain: float = 1.5
    penalty_shrink: float = 0.5
    tolerance: float = 0.0
    direction: int = 1
    best_score: float | None = field(default=None, init=False)
    last_score: float | None = field(default=None, init=False)
    updates: int = field(default=0, init=False)
    rewards: int = field(default=0, init=False)
    reverts: int = field(default=0, init=False)
    ignored: int = field(default=0, init=False)
    # The accepted strength while a trial runs; equal to ``strength`` during a baseline.
    _base: float = field(default=0.0, init=False, repr=False)
    _in_trial: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("strength", "min_strength", "max_strength", "step", "min_step", "max_step",
                     "reward_gain", "penalty_shrink", "tolerance"):
            if not _finite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        if self.min_strength > self.max_strength:
            raise ValueError(
                f"min_strength ({self.min_strength}) must not exceed max_strength "
                f"({self.max_strength})"
            )
        if not self.min_strength <= self.strength <= self.max_strength:
            raise ValueError(
                f"strength {self.strength} is outside [{self.min_strength}, {self.max_strength}]"
            )
        if not 0 < self.min_step <= self.step <= self.max_step:
            raise ValueError(
                "steps must satisfy 0 < min_step <= step <= max_step, got "
                f"min_step={self.min_step}, step={self.step}, max_step={self.max_step}"
            )
        if self.reward_gain < 1:
            raise ValueError(f"reward_gain must be >= 1, got {self.reward_gain}")
        if not 0 < self.penalty_shrink <= 1:
            raise ValueError(f"penalty_shrink must be in (0, 1], got {self.penalty_shrink}")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")
        if self.direction not in (1, -1):
            raise ValueError(f"direction must be 1 or -1, got {self.direction!r}")
        self._base = float(self.strength)

    @property
    def phase(self) -> str:
        """``"baseline"`` or ``"trial"``: what the next score passed to update measures."""
        return "trial" if self._in_trial else "baseline"

    def update(self, score: float) -> float:
        """Feed the averaged score measured at the current strength; return the next strength.

        A NaN or infinite score is ignored (counted in ``ignored``) and the strength kept.
        """
        if not _finite(score):
            self.ignored += 1
            return self.strength
        score = float(score)
        self.updates += 1
        self.last_score = score
        if not self._in_trial:
            self.best_score = score
        else:
            assert self.best_score is not None  # set by the baseline that started the trial
            change = score - self.best_score
            if change > self.tolerance:
                # Reward: keep the new strength and go on faster in the same direction.
                self.rewards += 1
                self._base = self.strength
                self.best_score = score
                self.step = min(self.step * self.reward_gain, self.max_step)
            else:
                # Penalty (or no change): back to the accepted strength, look the other way.
                self.reverts += 1
                if change < -self.tolerance:
                    self.step = max(self.step * self.penalty_shrink, self.min_step)
                self.direction = -self.direction
                self.strength = self._base
                self._in_trial = False  # the next score is a fresh baseline
                return self.strength
        self._propose_trial()
        return self.strength

    def reset(self, strength: float | None = None) -> None:
        """Restart the search at ``strength`` (clamped to the bounds; default: the accepted
        one), e.g. after a manual override; the step, direction and counters are kept."""
        if strength is None:
            strength = self._base
        if not _finite(strength):
            raise ValueError(f"strength must be a finite number, got {strength!r}")
        self.strength = self._base = self._clamp(float(strength))
        self.best_score = None
        self._in_trial = False

    def state(self) -> dict[str, Any]:
        """A snapshot for the node's metrics and diagnostics."""
        return {
            "strength": self.strength,
            "accepted_strength": self._base,
            "step": self.step,
            "direction": self.direction,
            "phase": self.phase,
            "best_score": self.best_score,
            "last_score": self.last_score,
            "updates": self.updates,
            "rewards": self.rewards,
            "reverts": self.reverts,
            "ignored": self.ignored,
        }

    def _clamp(self, value: float) -> float:
        return min(max(value, self.min_strength), self.max_strength)

    def _propose_trial(self) -> None:
        """Move from the accepted strength one step in the current direction."""
        trial = self._clamp(self._base + self.direction * self.step)
        if trial == self._base:  # at a bound: turn around
            self.direction = -self.direction
            trial = self._clamp(self._base + self.direction * self.step)
        self.strength = trial
        # With min_strength == max_strength there is nothing to try: keep measuring.
        self._in_trial = trial != self._base


class ScoreAverager:
    """Average downstream scores over a window of feedback messages.

    Each feedback message carries one task's score (e.g. ``"detection"``, ``"segmentation"``)
    for one fused image. The window is full after ``window`` finite scores, from any tasks;
    its :meth:`mean` is the mean over tasks of each task's mean, so a task that reports more
    often does not weigh more.

    After :meth:`reset` (called when the strength changed), the first ``skip`` messages are
    discarded: they usually score images fused with the previous strength, because the
    downstream nodes lag behind the fusion node.

    Thread-safe (a lock), so several feedback subscriptions may feed it concurrently; use
    :meth:`pop_mean` to take a full window's mean and start the next window atomically.

    Args:
        window: finite scores per window (>= 1).
        skip: messages to discard after each reset (>= 0).

    Raises:
        ValueError: on a window below 1 or a negative skip.
    """

    def __init__(self, window: int = 10, skip: int = 0) -> None:
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        if not isinstance(skip, int) or isinstance(skip, bool) or skip < 0:
            raise ValueError(f"skip must be an integer >= 0, got {skip!r}")
        self.window = window
        self.skip = skip
        self._lock = threading.Lock()
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._to_skip = skip

    def __repr__(self) -> str:
        return f"{type(self).__name__}(window={self.window}, skip={self.skip})"

    def add(self, task: str, score: float) -> bool:
        """Record one feedback message; True if it was counted (finite and not skipped)."""
        with self._lock:
            if self._to_skip > 0:
                self._to_skip -= 1
                return False
            if not _finite(score):
                return False
            self._sums[task] = self._sums.get(task, 0.0) + float(score)
            self._counts[task] = self._counts.get(task, 0) + 1
            return True

    @property
    def count(self) -> int:
        """Scores counted in the current window."""
        with self._lock:
            return sum(self._counts.values())

    @property
    def is_ready(self) -> bool:
        """True once the window holds ``window`` scores."""
        return self.count >= self.window

    def per_task(self) -> dict[str, float]:
        """Each task's mean score in the current window."""
        with self._lock:
            return {task: self._sums[task] / n for task, n in self._counts.items()}

    def mean(self) -> float:
        """Mean over tasks of the per-task means; NaN when the window is empty."""
        means = self.per_task()
        return sum(means.values()) / len(means) if means else math.nan

    def reset(self) -> None:
        """Start a new window and skip the next ``skip`` messages."""
        with self._lock:
            self._reset_locked()

    def pop_mean(self) -> float | None:
        """If the window is full, return its mean and start a new window; else None."""
        with self._lock:
            if sum(self._counts.values()) < self.window:
                return None
            means = [self._sums[task] / n for task, n in self._counts.items()]
            self._reset_locked()
            return sum(means) / len(means)

    def _reset_locked(self) -> None:
        self._sums.clear()
        self._counts.clear()
        self._to_skip = self.skip
