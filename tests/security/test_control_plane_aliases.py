"""Aliases: a symlink is followed before any decision, so it neither escapes an allowlist nor lets two
jobs hold "different" locks on one folder.

Attacks: a symlink inside an allowed prefix pointing outside it, as a dataset, an archive or a run
config; and two ingest jobs into one dataset, one through a symlink alias.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.security.control_plane import RUN_CONFIG, control_plane, train_job
from tests.services.support import LiveServer


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("roots")
    out = {name: base / name for name in ("sources", "datasets", "configs", "outside")}
    for path in out.values():
        path.mkdir()
    for name in ("sources", "datasets", "configs"):
        (out[name] / "escape").symlink_to(out["outside"])
    (out["outside"] / "run.yaml").write_text(RUN_CONFIG.read_text())
    return out


@pytest.fixture(scope="module")
def server(roots: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with control_plane(
        tmp_path_factory.mktemp("state"),
        allowed_sources=[str(roots["sources"])],
        allowed_datasets=[str(roots["datasets"])],
        allowed_configs=[str(roots["configs"])],
    ) as live:
        yield live


@pytest.fixture
def api(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        client.timeout = httpx.Timeout(120)  # the first train job imports the trainer
        yield client


def _ingest(source: Path, dataset: Path) -> dict[str, str]:
    return {"kind": "ingest", "source_uri": str(source), "dataset_uri": str(dataset)}


def test_a_symlink_out_of_the_allowed_datasets_is_403(api: httpx.Client, roots: dict[str, Path]) -> None:
    r = api.post("/api/v1/jobs", json=_ingest(roots["sources"] / "a", roots["datasets"] / "escape" / "ds"))
    assert r.status_code == 403, r.text
    assert "dataset_uri" in r.json()["detail"]


def test_a_symlink_out_of_the_allowed_sources_is_403(api: httpx.Client, roots: dict[str, Path]) -> None:
    r = api.post("/api/v1/jobs", json=_ingest(roots["sources"] / "escape" / "a", roots["datasets"] / "ds"))
    assert r.status_code == 403, r.text
    assert "source_uri" in r.json()["detail"]


def test_a_symlink_out_of_the_allowed_configs_is_403(api: httpx.Client, roots: dict[str, Path]) -> None:
    config = roots["configs"] / "escape" / "run.yaml"
    job = train_job(output_uri=str(roots["datasets"] / "run"), config_uri=str(config))
    r = api.post("/api/v1/jobs", json=job)
    assert r.status_code == 403, r.text
    assert "config_uri" in r.json()["detail"]


def test_ingests_into_a_dataset_and_its_alias_share_only_the_archive_lock(
    api: httpx.Client, server: LiveServer, roots: dict[str, Path]
) -> None:
    """One archive into a dataset and its alias: one lock (one run per archive); another archive: none
    shared (ingests of different archives into one dataset run together, ordered by its commit log)."""
    real = roots["datasets"] / "shared"
    real.mkdir()
    (roots["datasets"] / "alias").symlink_to(real)
    store = server.app.state.service.store
    locks = []
    for source, dataset in (("a", real), ("a", roots["datasets"] / "alias"), ("b", real)):
        r = api.post("/api/v1/jobs", json=_ingest(roots["sources"] / source, dataset))
        assert r.status_code == 201, r.text
        locks.append(set(store.get_job(r.json()["id"]).locks))
    assert locks[0] == locks[1] and len(locks[0]) == 1, locks
    assert not locks[0] & locks[2], locks
