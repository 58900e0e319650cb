"""No disclosure: what the service answers and logs never holds a foreign file's contents or keys,
a credential, or a URI's query string.

Attacks: a foreign file (a marker line, ``db_password: ...``) as a run config or recipe; a secret in
a URI's query string outside the allowlist; a Ray address carrying a password (refused at start) or
a token in its query string (``/healthz`` without a token, and the startup log).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from radforge.services.app.settings import SettingsError
from tests.security.control_plane import SECRET, control_plane, train_job
from tests.services.support import LiveServer, make_settings

MARKER_LINE = "planted-marker-line-e3a1"
FOREIGN_FILES = {
    "keys": f"{MARKER_LINE}: 1\ndb_password: {SECRET}\n",
    "nested keys": f"trainer:\n  {MARKER_LINE}: {SECRET}\ndb_password: {SECRET}\n",
    "values": f"steps: {SECRET}\nbatch_size: [{MARKER_LINE}]\n",
    "lines": f"{MARKER_LINE}\nroot:x:0:0:{SECRET}:/root:/bin/bash\n",
    "not yaml": f"{MARKER_LINE}\ndb_password: {SECRET}\n",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with control_plane(
        tmp_path_factory.mktemp("state"),
        allowed_sources=["s3://hospital-a/incoming/"],
        allowed_datasets=["s3://radforge-datasets/", "/tmp/"],
    ) as live:
        yield live


@pytest.fixture
def api(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def _clean(text: str) -> None:
    for planted in (SECRET, MARKER_LINE, "db_password", "root:x"):
        assert planted not in text, f"{planted!r} disclosed in {text}"


@pytest.mark.parametrize("content", FOREIGN_FILES.values(), ids=FOREIGN_FILES.keys())
def test_a_foreign_config_is_refused_without_its_contents(
    api: httpx.Client, tmp_path: Path, content: str
) -> None:
    foreign = tmp_path / "secrets.yaml"
    foreign.write_text(content)
    r = api.post("/api/v1/jobs", json=train_job(config_uri=str(foreign)))
    assert r.status_code == 422, r.text
    assert any("config_uri" in d["loc"] for d in r.json()["detail"])
    _clean(r.text)


@pytest.mark.parametrize("content", FOREIGN_FILES.values(), ids=FOREIGN_FILES.keys())
def test_a_foreign_recipe_is_refused_without_its_contents(
    api: httpx.Client, tmp_path: Path, content: str
) -> None:
    (tmp_path / "secrets.yaml").write_text(content)
    r = api.post("/api/v1/jobs", json=train_job(config={"recipe_file": str(tmp_path / "secrets.yaml")}))
    assert r.status_code == 422, r.text
    _clean(r.text)


@pytest.mark.parametrize(
    "body",
    [
        train_job(config_uri=f"s3://elsewhere/run.yaml?X-Amz-Signature={SECRET}"),
        train_job(output_uri=f"s3://elsewhere/run?token={SECRET}", config={}),
        {
            "kind": "ingest",
            "source_uri": f"s3://hospital-b/incoming?X-Amz-Credential={SECRET}",
            "dataset_uri": "s3://radforge-datasets/ct",
        },
    ],
    ids=["config_uri", "output_uri", "source_uri"],
)
def test_a_secret_in_a_query_string_is_not_echoed(api: httpx.Client, body: dict[str, object]) -> None:
    r = api.post("/api/v1/jobs", json=body)
    assert r.status_code == 403, r.text
    _clean(r.text)


def test_a_password_in_the_ray_address_is_refused_without_echo(tmp_path: Path) -> None:
    for address in (f"http://radforge:{SECRET}@ray-head:8265", f"radforge:{SECRET}@ray-head:6379"):
        with pytest.raises(SettingsError, match="ray_address") as e:
            make_settings(tmp_path, ray_address=address)
        _clean(str(e.value))


def test_healthz_and_the_startup_log_redact_the_ray_address(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A token in the dashboard URL's query string (or a user name) shows in neither."""
    caplog.set_level(logging.INFO)
    with control_plane(tmp_path, ray_address=f"http://radforge@127.0.0.1:9/?token={SECRET}") as live:
        with live.client(token=None) as anonymous:
            health = anonymous.get("/healthz")
    assert health.status_code == 200
    _clean(health.text)
    assert "radforge@" not in health.text
    started = [r.getMessage() for r in caplog.records if "control plane" in r.getMessage()]
    assert started, "no startup line logged"
    for line in started:
        _clean(line)
        assert "radforge@" not in line
