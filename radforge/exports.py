"""Lazy public names for a package's ``__init__``: each is imported from its module on first use.

A stage's ``__init__`` lists its public surface, but importing it must stay cheap: ``import
radforge.ingest`` should not start importing Ray, ``import radforge.services`` not FastAPI. PEP 562's
module-level ``__getattr__`` imports a name's module only when the name is first read.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, module_of: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``name`` comes from ``package.<module_of[name]>``.

    Unknown names raise :class:`AttributeError` naming the package, as a plain module would.
    """

    def __getattr__(name: str) -> Any:
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__
