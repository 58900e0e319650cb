"""Process identity and signalling for supervised jobs, from ``/proc`` (Linux).

A job process outlives the service that started it (its own session), so a restarted service
re-attaches by PID. A PID alone is not an identity (PIDs are reused), so each record keeps the
process start time; and a finished process whose parent is gone may stay a zombie (PID 1 does not
reap on some hosts), which counts as ended.
"""

from __future__ import annotations

import errno
import os
import signal


def parse_proc_stat(text: str) -> tuple[str, int]:
    """(state letter, start time in clock ticks since boot) from the text of ``/proc/<pid>/stat``.

    The command name (field 2) is in parentheses and may contain spaces or parentheses, so fields
    are counted after its last ``)``.
    """
    rest = text[text.rindex(")") + 2 :].split()
    return rest[0], int(rest[19])  # fields 3 (state) and 22 (starttime)


def process_start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` (its identity with the PID), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return parse_proc_stat(f.read())[1]
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return None


def is_running(pid: int, start_ticks: int | None) -> bool:
    """True if ``pid`` is the same process (same start time) and has not ended (zombies have)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state, start = parse_proc_stat(f.read())
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return False
    if start_ticks is not None and start != start_ticks:
        return False
    return state not in ("Z", "X")


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to the process group ``pgid`` (a job's session); False if it no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except OSError as e:
        if e.errno == errno.ESRCH:
            return False
        raise
