"""Progress the ``radforge`` command shows on stderr: ingest (series, slices, slices/s) and eval (tasks).

What a bar says is a pure function (:func:`ingest_status`, :func:`eval_status`); the rest is
wiring. An ingest's progress comes from its write tasks: each reports what it wrote to a small
counter actor (as the control plane's ingest job does, services/jobs/ingest.py), and a thread on
the driver turns the counts into the bar twice a second. Ray Data's own progress bars are off
while ours is shown, and Ray's INFO lines are hidden unless ``-v``.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)
REFRESH_S = 0.5  # how often the driver reads the counter actor
RAY_LOGGERS = ("ray", "ray.data")  # their console handlers print INFO lines by default


def ingest_status(
    *,
    series_done: int,
    series_total: int | None,
    slices: int,
    samples: int,
    decode_seconds: float | None,
    slices_total: int | None = None,
) -> str:
    """The words beside the ingest bar, e.g. ``series 2/3  120/400 slices  360 samples  41.2 slices/s``.

    ``series_total`` is None until the series are planned; ``slices_total`` is the source slices
    the planned series hold (a mosaic counts as one until decoded, so it is never shown below the
    slices done); ``decode_seconds`` is the time since planning (the rate is over the decoding and
    writing only: listing and planning come first).
    """
    if series_total is None:
        return "listing the archive, reading headers, planning series"
    of = "" if slices_total is None else f"/{max(slices_total, slices)}"
    text = f"series {series_done}/{series_total}  {slices}{of} slices  {samples} samples"
    if decode_seconds and slices:
        text += f"  {slices / decode_seconds:.1f} slices/s"
    return text


def eval_status(phase: str, done: int, total: int) -> str:
    """The words beside the eval bar: the phase, and (backbone, task) evaluations done of all."""
    return f"{phase} {done}/{total} evaluations" if total else phase


class ProgressCounter:
    """Totals reported by ingest write tasks (the body of a Ray actor)."""

    def __init__(self) -> None:
        self.totals = {"series": 0, "slices": 0, "samples": 0}

    def add(self, counts: dict[str, int]) -> None:
        for key, value in counts.items():
            self.totals[key] += int(value)

    def snapshot(self) -> dict[str, int]:
        return dict(self.totals)


def counting_sink(box: dict[str, Any]) -> type:
    """The project's MDS datasink, each write task reporting its series, slices and samples.

    They go to the counter actor in ``box["counter"]``, put there once Ray is up and the series
    are planned (before the sink is made and shipped to its tasks, which carry the box along).
    """
    from radforge.sharder.datasink import MDSDatasink

    class CountingSink(MDSDatasink):
        def write(self, blocks: Any, ctx: Any) -> dict[str, Any]:
            out = super().write(blocks, ctx)
            series = out["series"]
            slices = sum(int(s.get("slices_kept", 0)) + int(s.get("slices_dropped", 0)) for s in series)
            box["counter"].add.remote({"series": len(series), "slices": slices, "samples": out["samples"]})
            return out

    return CountingSink


def quiet_ray_logs() -> None:
    """Ray's INFO lines off the console (its log files keep them); its warnings and errors still show."""
    import ray.data  # noqa: F401  # configures the ray.data logger on import: after it, not before

    for name in RAY_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.WARNING)
    # "progress bars disabled": they are, for ours
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def _progress(title: str) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn(f"[bold]{title}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )


@contextmanager
def _live(progress: Any) -> Iterator[None]:
    """``progress`` shown while the body runs; its last state kept on success, gone on failure.

    On a terminal, log lines go above the live bar (through rich's proxy of stderr) instead of
    through it. A failure leaves only its one-line error: the bar is erased (terminal) or never
    printed (rich prints a non-terminal's bar once, when it stops).
    """
    handlers = [
        h
        for h in logging.getLogger().handlers
        if type(h) is logging.StreamHandler and h.stream is sys.__stderr__ and progress.console.is_terminal
    ]
    with progress:
        for h in handlers:
            h.setStream(sys.stderr)  # rich's proxy while the bar is live
        try:
            yield
        except BaseException:
            if progress.console.is_terminal:
                progress.live.transient = True
            else:
                progress.console.quiet = True
            raise
        finally:
            for h in handlers:
                h.setStream(sys.__stderr__)


@dataclass
class IngestHooks:
    """What :func:`radforge.ingest.pipeline.run_ingest` takes to report progress."""

    sink_cls: type
    on_plan: Callable[[int, int], None]


@contextmanager
def ingest_progress(*, verbose: bool) -> Iterator[IngestHooks]:
    """A live bar over an ingest's series on stderr, fed by its write tasks; yields the hooks to pass on.

    Nothing starts here: the counter actor is made when the series are planned (the ingest has
    connected to Ray by then), so a run refused before it (a missing archive) costs no Ray start.
    """
    import ray
    import ray.data

    if not verbose:
        quiet_ray_logs()
    ray.data.DataContext.get_current().enable_progress_bars = False  # ours instead
    progress = _progress("ingest")
    task = progress.add_task(
        "ingest",
        total=None,
        status=ingest_status(series_done=0, series_total=None, slices=0, samples=0, decode_seconds=None),
    )
    box: dict[str, Any] = {}  # counter (the actor), total (series planned), at (when planned)
    stop = threading.Event()

    def on_plan(series: int, slices: int) -> None:
        box["counter"] = ray.remote(num_cpus=0)(ProgressCounter).remote()
        box.update(total=series, slices_total=slices, at=time.monotonic())

    def refresh() -> None:
        if "counter" not in box:
            return  # still listing and planning: the bar says so
        counts = ray.get(box["counter"].snapshot.remote(), timeout=30)
        status = ingest_status(
            series_done=counts["series"],
            series_total=box["total"],
            slices=counts["slices"],
            slices_total=box["slices_total"],
            samples=counts["samples"],
            decode_seconds=time.monotonic() - box["at"],
        )
        progress.update(task, total=box["total"], completed=counts["series"], status=status)

    def follow() -> None:
        while not stop.wait(REFRESH_S):
            try:
                refresh()
            except Exception as e:  # the bar is best effort; the ingest goes on
                log.debug("progress refresh failed: %s", type(e).__name__)

    follower = threading.Thread(target=follow, name="ingest-progress", daemon=True)
    try:
        with _live(progress):
            follower.start()
            try:
                yield IngestHooks(sink_cls=counting_sink(box), on_plan=on_plan)
            finally:
                stop.set()
                follower.join()
            refresh()  # the final counts (the last tasks may have ended since the last refresh)
    finally:
        if "counter" in box:
            ray.kill(box["counter"])


@contextmanager
def eval_progress() -> Iterator[Callable[[str, int, int], None]]:
    """A live bar over an evaluation's (backbone, task) pairs on stderr; yields ``on_progress``."""
    progress = _progress("eval")
    task = progress.add_task("eval", total=None, status="loading")

    def on_progress(phase: str, done: int, total: int) -> None:
        progress.update(task, total=total or None, completed=done, status=eval_status(phase, done, total))

    with _live(progress):
        yield on_progress
