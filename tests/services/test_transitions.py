"""The job state machine as a table: every (state, event) pair, allowed or refused."""

from __future__ import annotations

import pytest

from radforge.services.app.models import JobState
from radforge.services.jobs.runner import final_state
from radforge.services.jobs.transitions import JobEvent, TransitionRefused, ended_event, next_state

Q, R, S, F, C = JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED
START, CANCEL, OK, FAIL = JobEvent.START, JobEvent.CANCEL, JobEvent.SUCCEEDED, JobEvent.FAILED

# (state, event, cancel requested) -> next state, or None where the event is refused
TABLE = [
    (Q, START, False, R),
    (Q, CANCEL, False, C),
    (Q, FAIL, False, F),
    (Q, OK, False, None),  # a job that never ran cannot succeed
    (R, START, False, None),
    (R, CANCEL, False, R),  # flagged: it ends when its process does
    (R, OK, False, S),
    (R, OK, True, S),  # success wins over a late cancel
    (R, FAIL, False, F),
    (R, FAIL, True, C),  # the cancel is why it ended
    *[(state, event, flag, None) for state in (S, F, C) for event in JobEvent for flag in (False, True)],
]


@pytest.mark.parametrize(("state", "event", "cancel_requested", "after"), TABLE)
def test_next_state(state: JobState, event: JobEvent, cancel_requested: bool, after: JobState | None) -> None:
    if after is None:
        with pytest.raises(TransitionRefused):
            next_state(state, event, cancel_requested=cancel_requested)
    else:
        assert next_state(state, event, cancel_requested=cancel_requested) == after


def test_the_table_covers_every_pair() -> None:
    pairs = {(state, event) for state, event, _, _ in TABLE}
    assert pairs == {(state, event) for state in JobState for event in JobEvent}


@pytest.mark.parametrize(
    ("exit_code", "committed", "event"),
    [
        (0, False, OK),
        (0, True, OK),
        (1, True, OK),
        (None, True, OK),
        (1, False, FAIL),
        (-9, False, FAIL),
        (None, False, FAIL),
    ],
)
def test_how_an_end_counts(exit_code: int | None, committed: bool, event: JobEvent) -> None:
    assert ended_event(exit_code=exit_code, committed=committed) == event


def test_final_state_is_the_table() -> None:
    assert final_state(exit_code=1, cancel_requested=True) == C
    assert final_state(exit_code=-15, cancel_requested=False, commit="committed") == S
    assert final_state(exit_code=None, cancel_requested=False, commit="committing") == F
