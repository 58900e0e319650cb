"""Layered configuration every stage shares: YAML file <- overrides, validated by a pydantic model.

Each config (ingest, service settings, training runs, recipes) is a pydantic model resolved once
from defaults, a YAML file and ``section.field=value`` overrides; errors are one line per problem
naming the file or override and the field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from pydantic import ValidationError


class ConfigError(ValueError):
    """An invalid configuration: the message names the field, the bad value and what is valid."""


def read_yaml_mapping(
    path: str | os.PathLike[str], *, error: type[Exception] = ConfigError, what: str = "config"
) -> dict[str, Any]:
    """The top-level mapping of a YAML file, or ``error`` with one line naming the file and the problem.

    This and :func:`parse_overrides` / :func:`merge_mappings` are the layered-configuration plumbing
    every config shares (ingest, service settings, training runs and recipes).
    """
    try:
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
    except OSError as e:
        raise error(f"{path}: cannot read {what} file ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML ({e.__class__.__name__})") from None
    if not isinstance(loaded, dict):
        raise error(f"{path}: expected a mapping of settings at the top level, got {type(loaded).__name__}")
    return loaded


def parse_overrides(items: Sequence[str], *, error: type[Exception] = ConfigError) -> dict[str, Any]:
    """``["a.b=1", "planes=[axial,coronal]"]`` -> nested dict; values parsed as YAML scalars/lists."""
    tree: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise error(f"override {item!r} is not of the form section.field=value (e.g. steps=100)")
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise error(f"override {key!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw)
    return tree


def merge_mappings(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` laid on top, nested mappings merged key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_mappings(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def format_validation_error(err: ValidationError, *, source: str) -> str:
    """One line per problem: ``<source>: <field.path>: <message> (got <value>)``."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(root)"
        got = e.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{source}: {where}: {e['msg']}{shown}")
    return "; ".join(lines)
