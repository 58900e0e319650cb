"""The supervisor of one job process.

``python -m radforge.services.jobs.supervisor --job-dir DIR -- COMMAND...``:

Started by the runner in a session of its own, it runs COMMAND with output to ``DIR/log.txt``,
forwards SIGTERM/SIGINT to it, and writes ``DIR/exit.json`` (exit status, end time) when it ends.
The exit status thus survives the service: a restarted service that is not this process's parent
still learns how the job ended.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from radforge.services.jobs.progress import EXIT, LOG, write_json_atomic


def main(argv: list[str] | None = None) -> int:
    """Run the command, record its exit status; returns 0 (the job's status is in exit.json)."""
    parser = argparse.ArgumentParser(
        prog="python -m radforge.services.jobs.supervisor", description=main.__doc__
    )
    parser.add_argument("--job-dir", type=Path, required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    job_dir: Path = args.job_dir
    with open(job_dir / LOG, "ab") as log:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def forward(signum: int, frame: object) -> None:
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the service's terminal going away is not a cancel
    code = child.wait()
    write_json_atomic(job_dir / EXIT, {"exit_code": code, "finished_at": time.time()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
