"""Property-based fuzzing of every route from the OpenAPI schema (schemathesis), with a valid token.

Whatever a token holder sends that the schema allows (and much that it does not: schemathesis mixes
in negative cases), the service answers without a 5xx and without a planted secret: the API token,
the de-identification salt, a token in the Ray address's query string, or the contents of a file in
an allowed folder. The example count is bounded so that the run takes well under a minute.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.security.control_plane import SECRET, control_plane
from tests.services.support import TOKEN, LiveServer

EXAMPLES_PER_ROUTE = 25


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    configs = tmp_path_factory.mktemp("configs")
    (configs / "secrets.yaml").write_text(f"db_password: {SECRET}\n")
    with control_plane(
        tmp_path_factory.mktemp("state"),
        ray_address=f"http://127.0.0.1:9/?token={SECRET}",
        allowed_configs=[str(configs)],
        allowed_sources=[str(configs)],
        allowed_datasets=[str(tmp_path_factory.mktemp("datasets"))],
    ) as live:
        yield live


@pytest.fixture(scope="module")
def api_schema(server: LiveServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


def _planted() -> list[str]:
    return [SECRET, TOKEN, os.environ["RADFORGE_SALT"]]


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_ROUTE,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same examples every run: a failure reproduces
)
def test_no_route_answers_5xx_or_a_secret(case: schemathesis.Case) -> None:
    response = case.call(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code}"
    for planted in _planted():
        assert planted not in response.text, f"{case.method} {case.formatted_path} disclosed a secret"


def test_the_fuzzed_schema_covers_every_route(
    api_schema: schemathesis.BaseSchema, server: LiveServer
) -> None:
    """Every route the app serves is in the schema the fuzzer reads (none hidden from it)."""
    routes = {
        (method.upper(), route.path)
        for route in server.app.routes
        for method in getattr(route, "methods", ()) or ()
        if method != "HEAD" and getattr(route, "include_in_schema", True)
    }
    fuzzed = {(op.method.upper(), op.path) for op in (r.ok() for r in api_schema.get_all_operations())}
    assert routes <= fuzzed, routes - fuzzed
    assert len(fuzzed) >= 10
    assert Path(api_schema.location or "").name == "openapi.json"
