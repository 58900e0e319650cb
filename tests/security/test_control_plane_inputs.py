"""Hostile input: oversize bodies (413, whatever Content-Length says), malformed and tagged override
YAML (422 naming the field), NUL and control characters in URIs (422), a dataset inside its own
archive (422), and a de-identification salt of whitespace (the service does not start).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from radforge.services.app.main import create_app
from radforge.services.app.settings import SettingsError
from tests.security.control_plane import control_plane, train_job
from tests.services.support import LiveServer, make_settings

LIMIT = 1 << 20  # the default max_request_bytes


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with control_plane(tmp_path_factory.mktemp("state")) as live:
        yield live


@pytest.fixture
def api(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def _oversize_body() -> bytes:
    """A valid train job whose inline config is larger than the limit."""
    return json.dumps(train_job(config={"note": "x" * (LIMIT + LIMIT // 2)})).encode()


def test_an_oversize_body_is_413(api: httpx.Client) -> None:
    r = api.post("/api/v1/jobs", content=_oversize_body(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert api.get("/healthz").status_code == 200


def test_an_oversize_body_without_content_length_is_413(api: httpx.Client) -> None:
    """Chunked: no Content-Length to check, the bytes are counted as they arrive."""
    body = _oversize_body()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    r = api.post("/api/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text


def test_a_body_under_the_limit_is_parsed(api: httpx.Client) -> None:
    r = api.post("/api/v1/jobs", json=train_job(config={"steps": "many"}))
    assert r.status_code == 422, r.text  # read and validated: the limit did not get in the way
    assert ["body", "config", "steps"] in [d["loc"] for d in r.json()["detail"]]


@pytest.mark.parametrize(
    "override", ["steps=[1", "steps=!!python/object/apply:os.system ['true']", "steps={a: [}"]
)
def test_hostile_override_yaml_is_422_naming_the_field(api: httpx.Client, override: str) -> None:
    r = api.post("/api/v1/jobs", json=train_job(config={}, overrides=[override]))
    assert r.status_code == 422, r.text
    assert any(d["loc"][:2] == ["body", "overrides"] for d in r.json()["detail"]), r.text


CONTROL = {"nul": "\x00", "lf": "\n", "cr": "\r", "esc": "\x1b[2J", "del": "\x7f"}


@pytest.mark.parametrize("bad", CONTROL.values(), ids=CONTROL.keys())
@pytest.mark.parametrize("field", ["source_uri", "dataset_uri"])
def test_control_characters_in_uris_are_422(api: httpx.Client, field: str, bad: str) -> None:
    body = {"kind": "ingest", "source_uri": "/tmp/archive", "dataset_uri": "/tmp/dataset"}
    body[field] = f"/tmp/a{bad}b"
    r = api.post("/api/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    assert ["body", field] in [d["loc"] for d in r.json()["detail"]]


@pytest.mark.parametrize("dataset", ["/tmp/archive/dataset", "/tmp/archive", "/tmp/archive/a/b/"])
def test_a_dataset_inside_its_source_is_422(api: httpx.Client, dataset: str) -> None:
    body = {"kind": "ingest", "source_uri": "/tmp/archive", "dataset_uri": dataset}
    r = api.post("/api/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    assert ["body", "dataset_uri"] in [d["loc"] for d in r.json()["detail"]]


def test_a_dataset_inside_its_source_through_a_symlink_is_422(api: httpx.Client, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    (tmp_path / "alias").symlink_to(archive)
    body = {"kind": "ingest", "source_uri": str(archive), "dataset_uri": str(tmp_path / "alias" / "ds")}
    r = api.post("/api/v1/jobs", json=body)
    assert r.status_code == 422, r.text


@pytest.mark.parametrize("salt", ["        ", "\t\n \t\n \t\n", "a b c d e f g "])
def test_a_weak_salt_stops_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, salt: str
) -> None:
    monkeypatch.setenv("RADFORGE_SALT", salt)
    with pytest.raises(SettingsError, match="RADFORGE_SALT") as e:
        create_app(make_settings(tmp_path, ray_address="127.0.0.1:9"))
    assert salt not in str(e.value)
