"""The autoscaling decision: KEDA's formula, the clamp, and the scale-in cool-down."""

from __future__ import annotations

import pytest

from openmwaa.runtime.base import WorkerLoad
from openmwaa.service.autoscaler import Decision, decide

COOLDOWN = 120.0


def _decide(
    load: WorkerLoad, *, enough_since: float = 0.0, now: float = 1.0, **limits: int
) -> Decision:
    return decide(
        load,
        tasks_per_worker=limits.get("tasks_per_worker", 5),
        min_workers=limits.get("min_workers", 1),
        max_workers=limits.get("max_workers", 4),
        enough_since=enough_since,
        now=now,
        cooldown=COOLDOWN,
    )


@pytest.mark.parametrize(
    ("queued", "running", "target"),
    [(0, 0, 1), (1, 0, 1), (5, 0, 1), (6, 0, 2), (3, 8, 3), (40, 0, 4), (0, 20, 4)],
)
def test_scale_out_follows_kedas_formula_clamped(queued: int, running: int, target: int) -> None:
    decision = _decide(WorkerLoad(queued, running, workers=1))
    assert decision.target == target
    assert decision.needed == -(-(queued + running) // 5)


def test_scale_in_waits_for_the_cool_down() -> None:
    idle = WorkerLoad(0, 0, workers=3)
    waiting = _decide(idle, enough_since=100.0, now=150.0)
    assert waiting.target == 3 and waiting.desired == 1
    assert "cool-down" in waiting.reason
    assert _decide(idle, enough_since=100.0, now=100.0 + COOLDOWN).target == 1


def test_limits_changed_below_the_running_workers_apply_at_once() -> None:
    # MaxWorkers lowered by UpdateEnvironment: no cool-down for workers above the new Max.
    decision = _decide(WorkerLoad(0, 10, workers=4), enough_since=0.5, now=1.0, max_workers=2)
    assert decision.target == 2


def test_min_workers_raised_scales_out_without_load() -> None:
    assert _decide(WorkerLoad(0, 0, workers=1), min_workers=3).target == 3
