"""Fusion pauses while no output has a subscriber and resumes on the first one."""

from __future__ import annotations

from cldyn_ros.streams.demand import OutputDemand


def test_pause_resume_counts() -> None:
    demand = OutputDemand()
    assert demand.admit(True) == (True, False)
    assert demand.admit(False) == (False, True)  # pauses
    assert demand.admit(False) == (False, False)
    assert demand.admit(True) == (True, True)  # resumes
    assert demand.admit(False) == (False, True)
    assert dict(demand.values()) == {"paused_no_subscriber": True, "pauses": 2,
                                     "skipped_pairs_no_subscriber": 3}
