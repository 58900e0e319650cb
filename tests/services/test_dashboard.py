"""The dashboard in headless Chromium during and after real jobs: an ingest, a training run on its
dataset, an eval of that run and a failing eval, on a real uvicorn server, real SQLite and the
session's local Ray; assertions on the rendered DOM (rows, charts from the server's history), the
report link it hands out, and screenshots kept in ``build/test-artifacts/services/``. Then the
history's ring buffers and the report links' signatures on their own.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import deque
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from radforge.services.app.history import History, add_point
from radforge.services.app.report_links import link_valid, report_file, report_link, signature
from radforge.services.jobs.progress import JobProgress
from radforge.trainer.eval.builtin import build_builtin_suite
from tests.services.support import (
    TOKEN,
    LiveServer,
    headless_chromium,
    session_ray_server,
    wait_state,
    wait_until,
)
from tests.services.test_eval import SMALL_SUITE, eval_spec
from tests.services.test_train import train_spec
from tests.support import make_archive
from tests.trainer.support import SHARDS

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "build" / "test-artifacts" / "services"
JOB_TIMEOUT = 300  # as test_train: a loaded machine (2 cores, several suites) slows every job
PNG = b"\x89PNG\r\n\x1a\n"


class Node:
    """An element of a parsed page: tag, attributes, children and text."""

    def __init__(self, tag: str, attrs: dict[str, str]) -> None:
        self.tag, self.attrs = tag, attrs
        self.children: list[Node | str] = []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Node]:
        """Elements below (document order) with ``tag`` and these attribute values (``class_`` for class)."""
        want = {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items()}
        out = []
        for child in self.children:
            if isinstance(child, Node):
                classes = child.attrs.get("class", "").split()
                if (tag is None or child.tag == tag) and all(
                    v in classes if k == "class" else child.attrs.get(k) == v for k, v in want.items()
                ):
                    out.append(child)
                out += child.find_all(tag, **attrs)
        return out

    def find(self, tag: str | None = None, **attrs: str) -> Node:
        found = self.find_all(tag, **attrs)
        assert len(found) == 1, f"{len(found)} <{tag} {attrs}> elements"
        return found[0]


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(html: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(html)
    return builder.root


def cells(dom: Node, job_id: str) -> dict[str, str]:
    """The text of a job's row, by column (its headers)."""
    headers = [th.text() for th in dom.find_all("th")]
    row = dom.find("tr", data_job_id=job_id)
    return dict(zip(headers, [td.text() for td in row.find_all("td")], strict=True))


def load(server: LiveServer, profile: Path, shot: Path) -> Node:
    """The dashboard as a new tab shows it (a fresh browser profile), with a screenshot."""
    shot.unlink(missing_ok=True)
    url = f"{server.url}/dashboard#token={TOKEN}"
    dom = headless_chromium(url, profile=profile, screenshot=shot, window=(1280, 1400))
    assert shot.read_bytes()[:8] == PNG and shot.stat().st_size > 10_000
    return parse(dom)


def shown(text: str, pattern: str) -> list[float]:
    """The numbers ``pattern``'s groups find in ``text`` (the page rounds as JavaScript does)."""
    match = re.search(pattern, text)
    assert match, (pattern, text)
    return [float(g) for g in match.groups()]


def line(dom: Node, chart: str, job_id: str) -> Node:
    return dom.find("svg", id=chart).find("polyline", data_job_id=job_id)


@pytest.fixture(scope="module")
def server(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    state = tmp_path_factory.mktemp("dashboard-state")
    with session_ray_server(state, max_running_jobs=3, cancel_grace_seconds=15) as live:
        yield live


def test_dashboard_during_and_after_ingest_train_and_eval(
    server: LiveServer, api: httpx.Client, tmp_path: Path
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (task,) = [p for p in build_builtin_suite(tmp_path / "tasks", **SMALL_SUITE) if p.name == "plane_2d"]
    archive = make_archive(tmp_path / "arch-dash", n_ct=2, n_mr=1, size=48, n_slices=6)
    dataset = tmp_path / "dataset"
    ingest = api.post(
        "/api/v1/jobs",
        json={"kind": "ingest", "source_uri": str(archive), "dataset_uri": str(dataset), "config": SHARDS},
    ).json()["id"]
    missing = tmp_path / "no-such-run"
    failing = api.post("/api/v1/jobs", json=eval_spec(missing, task, tmp_path / "report-missing")).json()[
        "id"
    ]

    # during the ingest: its job process is held (SIGSTOP) as soon as it runs, so the row a new tab
    # shows is the running job's, whatever this machine's speed; then it is let go and finishes
    store = server.app.state.service.store
    pid = wait_until(
        lambda: (job := store.get_job(ingest)).state == "running" and job.pid,
        timeout=JOB_TIMEOUT,
        what="the ingest's job process",
        every=0.02,
    )
    os.kill(pid, signal.SIGSTOP)
    try:
        held = api.get(f"/api/v1/jobs/{ingest}").json()
        assert held["state"] == "running", held
        dom = load(server, tmp_path / "profile-ingest", ARTIFACTS / "dashboard-during-ingest.png")
        row = cells(dom, ingest)
        assert row["state"] == "running" and row["archive / output"] == "arch-dash", row
        assert row["progress"] == ingest_progress(held["progress"] or {}), row
    finally:
        os.kill(pid, signal.SIGCONT)
    assert wait_state(api, ingest, {"succeeded", "failed"}, timeout=JOB_TIMEOUT)["state"] == "succeeded"
    assert wait_state(api, failing, {"succeeded", "failed"}, timeout=JOB_TIMEOUT)["state"] == "failed"

    run = tmp_path / "run"
    train = api.post(
        "/api/v1/jobs", json=train_spec(str(dataset), run, "steps=100000", "checkpoint.every=1")
    ).json()["id"]
    # the run is cancelled whatever the checks below find: a run left training holds the session's
    # Ray CPUs, and every later test that needs them waits until it times out
    try:
        wait_until(
            lambda: ((api.get(f"/api/v1/jobs/{train}").json().get("progress") or {}).get("step") or 0) >= 2,
            timeout=JOB_TIMEOUT,
            what="the run to report two steps",
        )

        # during training: a new tab shows the run's row and charts, and the finished ingest's chart
        opened = time.time()
        dom = load(server, tmp_path / "profile-during", ARTIFACTS / "dashboard-during.png")
        row = cells(dom, train)
        assert row["state"] == "running", row
        step = int(row["progress"].removeprefix("step ").split("/")[0])
        assert step >= 2 and row["progress"].endswith("/100000"), row
        assert row["rate"].endswith(" img/s") and float(row["rate"].split()[0]) > 0, row
        assert row["details"].startswith("loss ") and " · data wait " in row["details"], row
        for chart in ("chart-train-images", "chart-train-loss", "chart-train-wait"):
            assert int(line(dom, chart, train).attrs["data-points"]) >= 1
        ingest_line = line(dom, "chart-samples", ingest)
        # the ingest ended before this tab opened: its points come from the server's history (how
        # many depends on how long it ran against the sampling period: one on a loaded machine)
        assert int(ingest_line.attrs["data-points"]) >= 1
        assert float(dom.find("svg", id="chart-samples").attrs["data-first"]) < opened
    finally:
        r = api.post(f"/api/v1/jobs/{train}/cancel")
    assert r.status_code == 202, r.text
    trained = wait_state(api, train, {"cancelled", "failed", "succeeded"}, timeout=JOB_TIMEOUT)
    assert trained["state"] == "cancelled", trained
    evaluation = api.post("/api/v1/jobs", json=eval_spec(run, task, tmp_path / "report")).json()["id"]
    evaluated = wait_state(api, evaluation, {"succeeded", "failed"}, timeout=JOB_TIMEOUT)
    assert evaluated["state"] == "succeeded", evaluated["error"]

    # after: another new tab; every chart point below was recorded before it opened
    opened = time.time()
    dom = load(server, tmp_path / "profile-after", ARTIFACTS / "dashboard-after.png")
    row = cells(dom, ingest)
    assert row["state"] == "succeeded" and row["archive / output"] == "arch-dash", row
    assert (
        row["progress"]
        == f"3/3 series, {api.get(f'/api/v1/jobs/{ingest}').json()['result']['samples_written']} slices"
    )
    assert row["rate"].endswith(" slices/s"), row
    row, done = cells(dom, train), trained["progress"]
    assert row["state"] == "cancelled" and row["progress"] == f"step {done['step']}/100000", row
    assert shown(row["rate"], r"(\S+) img/s") == [pytest.approx(done["images_per_second"], abs=0.051)]
    assert shown(row["details"], r"loss (\S+) · data wait (\S+)%") == [
        pytest.approx(done["loss"], abs=5.1e-4),
        pytest.approx(100 * done["data_wait_fraction"], abs=0.51),
    ]
    # every job has ended, so the server's history no longer changes: each line draws exactly the
    # points the server recorded for that job (how many depends on how long it ran against the
    # sampling period, so only "at least one" is fixed), all from before this tab opened
    recorded = {j["job_id"]: j["series"] for j in api.get("/api/v1/history").json()["jobs"]}
    for chart, job, name in [
        ("chart-samples", ingest, "samples_per_second"),
        ("chart-bytes", ingest, "bytes_per_second"),
        ("chart-train-images", train, "images_per_second"),
    ]:
        points = recorded[job][name]
        assert len(points) >= 1 and max(t for t, _ in points) < opened, (chart, points)
        assert int(line(dom, chart, job).attrs["data-points"]) == len(points), chart
        assert float(dom.find("svg", id=chart).attrs["data-first"]) < opened, chart

    row = cells(dom, evaluation)
    scores = evaluated["result"]["scores"]
    ours, base = scores["run"]["plane_2d"], scores["random_init"]["plane_2d"]
    for probe in ("linear", "knn"):
        pattern = rf"{probe} (\S+) vs (\S+) random init, (\d)/1 tasks won"
        assert shown(row["details"], pattern) == [
            pytest.approx(ours[probe], abs=5.1e-4),
            pytest.approx(base[probe], abs=5.1e-4),
            int(ours[probe] > base[probe]),
        ]
    link = dom.find("tr", data_job_id=evaluation).find("a", class_="report-link").attrs["href"]

    error = dom.find("tr", data_error_for=failing).text()
    assert "no checkpoint at" in error and str(missing) in error, error
    assert dom.find_all("tr", data_error_for=evaluation) == []

    # the link opens the report and its plots without a token; nothing else
    page = httpx.get(server.url + link)
    assert page.status_code == 200 and "random_init" in page.text, page.text[:500]
    assert "script-src" not in page.headers["content-security-policy"]
    plot = httpx.get(server.url + link.replace("report.html", "plots/plane_2d.png"))
    assert plot.status_code == 200 and plot.content[:8] == PNG
    assert httpx.get(server.url + link.replace("report.html", "results.json")).status_code == 404
    forged = link.replace(evaluation, failing)
    assert httpx.get(server.url + forged).status_code == 403

    history = api.get("/api/v1/history").json()
    assert set(history) == {"time", "window_seconds", "resolution_seconds", "jobs"}
    by_job = {j["job_id"]: j for j in history["jobs"]}
    assert set(by_job[train]["series"]) >= {"images_per_second", "loss", "data_wait_fraction"}
    later = api.get("/api/v1/history", params={"since": history["time"]}).json()
    assert later["jobs"] == []  # nothing runs any more: no point after the last answer


def ingest_progress(p: dict[str, Any]) -> str:
    """The progress cell the page shows for an ingest's progress record (app.js progressText)."""
    parts = []
    if p.get("series_total") is not None:
        parts.append(f"{p.get('series_done') or 0}/{p['series_total']} series")
    if p.get("samples_written") is not None:
        parts.append(f"{p['samples_written']} slices")
    return ", ".join(parts) or p.get("phase") or ""


def progress(**values: Any) -> JobProgress:
    return JobProgress(**values)


def test_history_keeps_one_point_per_interval_within_the_window_for_the_latest_jobs() -> None:
    points: deque[tuple[float, float]] = deque()
    for t, v in [(100.0, 1.0), (101.0, 2.0), (101.9, 3.0), (102.0, 4.0), (107.5, 5.0)]:
        add_point(points, t, v, resolution=2.0)
    assert list(points) == [(101.9, 3.0), (102.0, 4.0), (107.5, 5.0)]  # 100-102, 102-104, 106-108

    history = History(window_seconds=60, resolution_seconds=2, max_jobs=2)
    history.record("a", "ingest", progress(samples_per_second=10.0, phase="running"), now=1000)
    history.record("a", "ingest", progress(samples_per_second=float("nan")), now=1002)  # skipped
    history.record("b", "train", progress(images_per_second=5.0, loss=2.5, step=1), now=1010)
    history.record("c", "eval", progress(tasks_done=1, tasks_total=2), now=1011)  # nothing tracked
    snap = history.snapshot(now=1020)
    assert {j.job_id: j.series for j in snap.jobs} == {
        "a": {"samples_per_second": [(1000, 10.0)]},
        "b": {"images_per_second": [(1010, 5.0)], "loss": [(1010, 2.5)]},
    }
    assert history.snapshot(now=1020, since=1005).jobs[0].job_id == "b"
    assert [j.job_id for j in history.snapshot(now=1065).jobs] == ["b"]  # a's point left the window
    history.record("d", "train", progress(loss=1.0), now=1066)
    history.record("e", "train", progress(loss=1.0), now=1067)  # three jobs: b, the oldest, goes
    assert [j.job_id for j in history.snapshot(now=1068).jobs] == ["d", "e"]

    bounded = History(window_seconds=10, resolution_seconds=1)
    for t in range(100):
        bounded.record("a", "train", progress(loss=float(t)), now=float(t))
    (job,) = bounded.snapshot(now=99).jobs
    assert [t for t, _ in job.series["loss"]] == [float(t) for t in range(89, 100)]


def test_report_links_are_signed_per_job_and_expire(tmp_path: Path) -> None:
    link = report_link("secret-token-0123456789", "job1", now=1000, seconds=60)
    _, _, _, job, expires, sig, name = link.split("/")
    assert (job, name) == ("job1", "report.html") and expires == "1060"
    assert link_valid("secret-token-0123456789", "job1", 1060, sig, now=1059)
    assert not link_valid("secret-token-0123456789", "job1", 1060, sig, now=1060)  # expired
    assert not link_valid("secret-token-0123456789", "job2", 1060, sig, now=1000)  # another job
    assert not link_valid("secret-token-0123456789", "job1", 9999, sig, now=1000)  # a longer life
    assert not link_valid("another-token-0123456789", "job1", 1060, sig, now=1000)  # a rotated token
    assert sig == signature("secret-token-0123456789", "job1", 1060)

    folder = tmp_path / "report"
    (folder / "plots").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(PNG)
    (folder / "plots" / "link.png").symlink_to(tmp_path / "secret.png")
    assert report_file(folder, "report.html") == folder / "report.html"
    assert report_file(folder, "plots/plane_2d.png") == folder / "plots" / "plane_2d.png"
    for name in ("plots/link.png", "../secret.png", "plots/../../secret.png", "results.json", "plots/.x.png"):
        assert report_file(folder, name) is None, name
