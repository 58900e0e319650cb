"""Where jobs run: a Ray cluster given by address, or an embedded local Ray that outlives restarts.

The embedded Ray is a head process of its own (``python -m radforge.services.jobs.raycluster``, its own
session, listening on 127.0.0.1 only), not part of the service process: jobs keep running while the
service restarts, and the restarted service finds the head again through ``STATE_DIR/ray.json``. The
service stops it on shutdown only when no job is running.

Loopback is not a boundary between local users: the head runs with Ray's token authentication
(``RAY_AUTH_MODE=token``, Ray >= 2.52), its token a 0600 file in the state folder
(``STATE_DIR/ray-auth-token``) given only to the job processes. Another local process cannot join the
cluster, run work on it, or read the job processes' environment (the salt) through it.

Measured here (2 cores): the head is up in 4-9 s; a job process connects in < 0.1 s.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from radforge.files import PRIVATE_FILE, make_private_dir, touch_private
from radforge.services.jobs.process_identity import is_running, process_start_ticks, signal_group
from radforge.services.jobs.progress import read_json, write_json_atomic

log = logging.getLogger(__name__)

INFO_FILE = "ray.json"
HEAD_LOG = "ray-head.log"
TOKEN_FILE = "ray-auth-token"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
# Every Ray process of a loopback cluster (head and job drivers) needs these (see ENVIRONMENT.md):
# without the first, Ray listens on all interfaces and drivers resolve a non-loopback node IP.
LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}


class RayUnavailable(RuntimeError):
    """The embedded Ray could not be started or reached."""


class RayProvider(Protocol):
    """Gives the address job processes connect to, and the environment they need for it."""

    def address(self) -> str: ...

    def job_env(self) -> dict[str, str]: ...

    def describe(self) -> str: ...

    def close(self, *, jobs_running: bool) -> None: ...


class ExternalRay:
    """A Ray cluster run by someone else (``--ray-address``); the service never stops it."""

    def __init__(self, address: str) -> None:
        self._address = address

    def address(self) -> str:
        return self._address

    def job_env(self) -> dict[str, str]:
        host = self._address.rsplit(":", 1)[0]
        return dict(LOOPBACK_ENV) if host in ("127.0.0.1", "localhost") else {}

    def describe(self) -> str:
        return "external"

    def close(self, *, jobs_running: bool) -> None:
        return None


def _port_open(address: str, *, timeout: float = 0.5) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def ray_reachable(address: str, *, timeout: float = 5.0) -> bool:
    """False if ``address`` is ``host:port`` and nothing listens there (Ray itself retries for minutes)."""
    _, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return True  # "auto", "ray://...": let Ray decide
    return _port_open(address, timeout=timeout)


def token_env(token_file: Path) -> dict[str, str]:
    """The environment of a Ray process of a token-authenticated loopback cluster (head or driver)."""
    return {**LOOPBACK_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}


def ensure_token(path: Path) -> None:
    """A 256-bit cluster token in ``path`` (0600), created the first time and kept across restarts."""
    if path.exists():
        os.chmod(path, PRIVATE_FILE)
        return
    touch_private(path)
    path.write_text(secrets.token_hex(32))


class EmbeddedRay:
    """A local Ray head on 127.0.0.1, started on first use and shared across service restarts.

    ``token_auth=False`` starts a head any local process may join, as a remote cluster without Ray's
    token looks from here (tests of the Job Submission API use it so); the service never does.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        num_cpus: int | None = None,
        dashboard_port: int | None = None,
        token_auth: bool = True,
    ) -> None:
        self.state_dir = state_dir
        self.num_cpus = num_cpus
        self.dashboard_port = dashboard_port  # serve Ray's dashboard (Job Submission API) on 127.0.0.1
        self.token_auth = token_auth
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def token_path(self) -> Path:
        return self.state_dir / TOKEN_FILE

    @property
    def info_path(self) -> Path:
        return self.state_dir / INFO_FILE

    def _alive_info(self) -> dict[str, object] | None:
        info = read_json(self.info_path)
        if not isinstance(info, dict):
            return None
        pid, start, address = info.get("pid"), info.get("proc_start"), info.get("gcs_address")
        if not isinstance(pid, int) or not isinstance(address, str):
            return None
        if not is_running(pid, start if isinstance(start, int) else None) or not _port_open(address):
            return None
        return info

    def address(self) -> str:
        """The head's GCS address, starting the head if none is alive."""
        info = self._alive_info()
        if info is not None:
            return str(info["gcs_address"])
        return self._start()

    def _start(self) -> str:
        make_private_dir(self.state_dir)
        self.info_path.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "radforge.services.jobs.raycluster", "--info", str(self.info_path)]
        if self.token_auth:
            ensure_token(self.token_path)
            argv += ["--token-file", str(self.token_path)]
        if self.num_cpus:
            argv += ["--num-cpus", str(self.num_cpus)]
        if self.dashboard_port is not None:
            argv += ["--dashboard-port", str(self.dashboard_port)]
        touch_private(self.state_dir / HEAD_LOG)
        with open(self.state_dir / HEAD_LOG, "ab") as out:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the service; one group to stop
                env={**os.environ, **self.job_env()},
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            info = self._alive_info()
            if info is not None:
                log.info("embedded Ray head started on %s (pid %s)", info["gcs_address"], info["pid"])
                return str(info["gcs_address"])
            if self._proc.poll() is not None:
                raise RayUnavailable(
                    f"the embedded Ray head exited with status {self._proc.returncode} "
                    f"(see {self.state_dir / HEAD_LOG})"
                )
            time.sleep(0.1)
        raise RayUnavailable(f"the embedded Ray head did not start within {START_TIMEOUT_S:.0f} s")

    def job_env(self) -> dict[str, str]:
        """What a process needs to join this head: loopback settings and, with token auth, the token."""
        return token_env(self.token_path) if self.token_auth else dict(LOOPBACK_ENV)

    def dashboard_url(self) -> str | None:
        """The head's dashboard (``http://127.0.0.1:PORT``) when it serves one and is alive."""
        info = self._alive_info()
        url = info.get("dashboard_url") if info is not None else None
        return url if isinstance(url, str) else None

    def describe(self) -> str:
        return "embedded" if self._alive_info() is not None else "embedded (not started)"

    def close(self, *, jobs_running: bool) -> None:
        """Stop the head unless jobs still run on it (they keep it for the next service start)."""
        if jobs_running:
            log.info("leaving the embedded Ray running: jobs are still running on it")
            return
        info = self._alive_info()
        if info is None:
            return
        pid = int(str(info["pid"]))
        signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline and is_running(pid, process_start_ticks(pid)):
            if self._proc is not None and self._proc.pid == pid:
                self._proc.poll()  # reap our own child
            time.sleep(0.1)
        signal_group(pid, signal.SIGKILL)  # whatever is left of the group
        if self._proc is not None:
            self._proc.poll()
        self.info_path.unlink(missing_ok=True)


# ---- the head process ----------------------------------------------------------------------------
def _init_with_free_agent_port(**kwargs: Any) -> Any:
    """``ray.init`` with this node's dashboard agent on any free port.

    Every local Ray's dashboard agent asks for port 52365, and ``ray.init`` (unlike ``ray start``)
    has no option for it: with another Ray already on the host (a test session's, the demo's), this
    head's agent serves no HTTP and the Job Submission API answers "No available agent" forever.
    Port 0 lets the agent bind a free port, which Ray publishes to the head. Ray 2.60 builds its
    ``RayParams`` by module attribute at call time, so a subclass defaulting the port is enough.
    """
    import ray
    from ray._private import parameter

    original = parameter.RayParams

    class _FreeAgentPort(original):  # type: ignore[misc, valid-type]
        def __init__(self, *a: Any, **kw: Any) -> None:
            kw.setdefault("dashboard_agent_listen_port", 0)
            super().__init__(*a, **kw)

    parameter.RayParams = _FreeAgentPort  # type: ignore[misc]
    try:
        return ray.init(**kwargs)
    finally:
        parameter.RayParams = original  # type: ignore[misc]


def main(argv: list[str] | None = None) -> int:
    """Run a local Ray head bound to 127.0.0.1 until SIGTERM; publish its address in ``--info``."""
    parser = argparse.ArgumentParser(
        prog="python -m radforge.services.jobs.raycluster", description=main.__doc__
    )
    parser.add_argument("--info", type=Path, required=True, help="file to write {pid, gcs_address} to")
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument(
        "--dashboard-port", type=int, default=None, help="serve Ray's dashboard (Job Submission API) here"
    )
    parser.add_argument("--token-file", type=Path, default=None, help="Ray token authentication, this token")
    args = parser.parse_args(argv)
    env = LOOPBACK_ENV if args.token_file is None else token_env(args.token_file)
    for key, value in env.items():
        os.environ[key] = value
    import ray

    # address="local": always a new cluster (never one a `ray start` left registered on this host)
    dashboard: dict[str, object] = (
        {"include_dashboard": False}
        if args.dashboard_port is None
        else {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": args.dashboard_port}
    )
    init: Any = ray.init if args.dashboard_port is None else _init_with_free_agent_port
    context = init(
        address="local",
        num_cpus=args.num_cpus,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
        **dashboard,
    )
    pid = os.getpid()
    write_json_atomic(
        args.info,
        {
            "pid": pid,
            "proc_start": process_start_ticks(pid),
            "gcs_address": ray.get_runtime_context().gcs_address,
            "dashboard_url": f"http://{context.dashboard_url}" if context.dashboard_url else None,
            "started_at": time.time(),
        },
    )

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while True:
            signal.pause()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
