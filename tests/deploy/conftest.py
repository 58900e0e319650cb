from __future__ import annotations

import pytest

from tests.deploy.manifests import TARGETS, Doc, documents, render


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Doc]]:
    """Every kustomization target rendered once: target -> documents."""
    return {target: documents(render(target)) for target in TARGETS}
