"""The life of a job as one pure function: which state an event leads to, from which state.

queued -> running (started) | cancelled (cancel) | failed (could not be started);
running -> running (cancel: flagged, the process is signalled) | succeeded | failed | cancelled.
A job that ended stays ended: any event on it is refused. The store's conditional updates
(``claim_job``: only from queued; ``finish_job``: only from a state that has not ended) apply the
same table atomically; the runner asks this function what to record.
"""

from __future__ import annotations

from enum import StrEnum

from radforge.services.app.models import TERMINAL_STATES, JobState


class JobEvent(StrEnum):
    """What happens to a job."""

    START = "start"  # a slot and its locks are free: its process is launched
    CANCEL = "cancel"  # a client asked to cancel it
    SUCCEEDED = "succeeded"  # ended with exit status 0, or after its dataset commit (the point of no return)
    FAILED = "failed"  # ended otherwise: a status, a signal, vanished, lost by Ray, could not be launched


class TransitionRefused(ValueError):
    """An event a job in this state cannot take (it has ended, or has not started)."""


_TABLE: dict[tuple[JobState, JobEvent], JobState] = {
    (JobState.QUEUED, JobEvent.START): JobState.RUNNING,
    (JobState.QUEUED, JobEvent.CANCEL): JobState.CANCELLED,
    (JobState.QUEUED, JobEvent.FAILED): JobState.FAILED,  # e.g. a kind this build no longer has
    (JobState.RUNNING, JobEvent.CANCEL): JobState.RUNNING,  # flagged; it ends when its process does
    (JobState.RUNNING, JobEvent.SUCCEEDED): JobState.SUCCEEDED,
    (JobState.RUNNING, JobEvent.FAILED): JobState.FAILED,
}


def next_state(state: JobState, event: JobEvent, *, cancel_requested: bool = False) -> JobState:
    """The state ``event`` leads to from ``state``; :class:`TransitionRefused` if it cannot happen.

    A running job that fails after a cancel was requested is cancelled, not failed (the cancel is
    why it ended); success wins over a late cancel.
    """
    if state in TERMINAL_STATES:
        raise TransitionRefused(f"the job has ended ({state.value}); {event.value} does not apply")
    try:
        after = _TABLE[(state, event)]
    except KeyError:
        raise TransitionRefused(f"a {state.value} job cannot take {event.value}") from None
    if after == JobState.FAILED and state == JobState.RUNNING and cancel_requested:
        return JobState.CANCELLED
    return after


def ended_event(*, exit_code: int | None, committed: bool) -> JobEvent:
    """How a job's end counts: success with exit status 0 or once its dataset is committed."""
    return JobEvent.SUCCEEDED if exit_code == 0 or committed else JobEvent.FAILED
