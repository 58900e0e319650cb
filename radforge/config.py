"""Layered configuration every stage shares: defaults <- YAML file <- environment <- overrides.

Each config (ingest, service settings, training runs, recipes) is a pydantic model resolved once by
:func:`load_model`; a problem is reported as one line naming where the bad value came from (the
override as typed, the environment variable or the file) and the field, never a pydantic URL.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


MAX_CONFIG_BYTES = 1 << 20  # configs, settings and recipes are a few KiB; more is refused unread


class ConfigError(ValueError):
    """An invalid configuration: the message names the field, the bad value and what is valid."""


def read_yaml_mapping(
    path: str | os.PathLike[str], *, error: type[Exception] = ConfigError, what: str = "config"
) -> dict[str, Any]:
    """The top-level mapping of a YAML file, or ``error`` with one line naming the file and the problem.

    This and :func:`parse_overrides` / :func:`merge_mappings` are the layered-configuration plumbing
    every config shares (ingest, service settings, training runs and recipes).
    """
    from radforge.files import FileRefused, read_bounded_text

    try:
        loaded = yaml.safe_load(read_bounded_text(path, limit=MAX_CONFIG_BYTES)) or {}
    except OSError as e:
        raise error(f"{path}: cannot read {what} file ({e.strerror})") from None
    except FileRefused as e:  # a device, a FIFO, a huge file: refused before reading (radforge.files)
        raise error(f"{path}: {what} file refused: {e}") from None
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
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as e:  # safe_load refuses !!python tags too (ConstructorError)
            raise error(f"override {key!r}: the value is not valid YAML ({type(e).__name__})") from None
    return tree


def merge_mappings(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` laid on top, nested mappings merged key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_mappings(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def _leaves(data: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every value of a nested mapping with its key path (an empty mapping counts as a value)."""
    out: list[tuple[tuple[str, ...], Any]] = []
    for k, v in data.items():
        path = (*prefix, str(k))
        out.extend(_leaves(v, path) if isinstance(v, Mapping) and v else [(path, v)])
    return out


def _related(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """One path lies on the other (equal, or one is a prefix of the other)."""
    n = min(len(a), len(b))
    return tuple(map(str, a[:n])) == tuple(map(str, b[:n]))


def _strings(value: Any) -> list[str]:
    """Every string inside a value (nested mappings and lists included)."""
    if isinstance(value, str):
        return [value]
    items = value.values() if isinstance(value, Mapping) else value if isinstance(value, list | tuple) else []
    return [s for item in items for s in _strings(item)]


def _shown(value: Any) -> str:
    """An override value as it would be typed on the command line (YAML flow style: ``[axial, oblique]``)."""
    if isinstance(value, str):
        return value
    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip()
    except yaml.YAMLError:  # not a YAML value (a Path, a SecretStr passed programmatically)
        return str(value)
    return text.removesuffix("...").strip()


class LayeredConfig:
    """A configuration tree built from layers, remembering which layer set each value.

    Layers are laid on top (:meth:`lay`) or underneath (:meth:`lay_under`, for a file the
    configuration itself names, such as a run's ``recipe_file``); later layers win, nested
    mappings merge key by key. :meth:`validate` turns a pydantic error into one line per problem
    that names the layer the bad value came from: the override as typed, the environment variable
    or the file, and the field.
    """

    def __init__(self, *, error: type[ConfigError] = ConfigError, what: str = "config") -> None:
        self.tree: dict[str, Any] = {}
        self.error = error
        self.what = what
        self._origins: list[tuple[tuple[str, ...], str]] = []  # (key path, layer label), oldest first

    def lay(self, data: Mapping[str, Any], source: str | None = None) -> None:
        """Lay ``data`` on top; every value in it is reported as coming from ``source``.

        Without ``source`` each value is labelled as an override, ``override key.path=value``.
        """
        self.tree = merge_mappings(self.tree, data)
        self._origins.extend(
            (path, source or f"override {'.'.join(path)}={_shown(value)}") for path, value in _leaves(data)
        )

    def lay_under(self, data: Mapping[str, Any], source: str) -> None:
        """Lay ``data`` underneath everything laid so far (the layers above override it)."""
        self.tree = merge_mappings(data, self.tree)
        self._origins[:0] = [(path, source) for path, _ in _leaves(data)]

    def lay_file(self, path: str | os.PathLike[str]) -> None:
        """Lay the YAML mapping in the file at ``path`` on top."""
        self.lay(read_yaml_mapping(path, error=self.error, what=self.what), str(path))

    def lay_overrides(self, overrides: Sequence[str] | Mapping[str, Any]) -> None:
        """Lay ``key.path=value`` overrides (strings, as typed) or an already nested mapping on top."""
        if isinstance(overrides, Mapping):
            self.lay(overrides)
            return
        for item in overrides:
            self.lay(parse_overrides([item], error=self.error), f"override {item.strip()}")

    def lay_environment(self, variables: Mapping[str, str], environ: Mapping[str, str]) -> None:
        """Lay the set, non-empty ``environ[VAR]`` of ``variables`` (VAR -> dotted field) on top."""
        for var, field in variables.items():
            if environ.get(var):
                *sections, name = field.split(".")
                node: dict[str, Any] = {name: environ[var]}
                for section in reversed(sections):
                    node = {section: node}
                self.lay(node, f"${var}")

    def sources(self, loc: tuple[Any, ...]) -> list[str]:
        """Labels of the layers whose surviving values lie on the field path ``loc``."""
        labels: list[str] = []
        for i, (path, label) in enumerate(self._origins):
            shadowed = any(_related(path, later) for later, _ in self._origins[i + 1 :])
            if not shadowed and _related(path, loc) and label not in labels:
                labels.append(label)
        return labels

    def validate(self, model: type[M], *, secrets: Collection[str] = ()) -> M:
        """``model`` validated from the tree, or :attr:`error` with one line per problem.

        Each line reads ``<source>: <field>: <message>``: the source is the override as typed, the
        environment variable or the file (then the bad value follows as ``(got ...)``), or
        :attr:`what` when the value is a default. The values of ``secrets`` (dotted field names)
        are never shown.
        """
        try:
            return model.model_validate(self.tree)
        except ValidationError as err:
            message = "; ".join(self._describe(e) for e in err.errors(include_url=False))
        for field in secrets:
            value = self._value_at(field.split("."))
            hidden = {_shown(value), *_strings(value)} if value is not None else set()
            for text in sorted(hidden - {""}, key=len, reverse=True):
                message = message.replace(text, "***")
        raise self.error(message) from None

    def _describe(self, e: Any) -> str:
        loc = tuple(e["loc"])
        labels = self.sources(loc) or [self.what]
        msg = str(e["msg"]).removeprefix("Value error, ")
        got = e.get("input")
        shown = ""
        if not isinstance(got, Mapping) and not all(label.startswith("override ") for label in labels):
            shown = f" (got {got!r})"
        field = ".".join(str(p) for p in loc)
        return f"{', '.join(labels)}: {field + ': ' if field else ''}{msg}{shown}"

    def _value_at(self, parts: Sequence[str]) -> Any:
        node: Any = self.tree
        for part in parts:
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node


def load_model(
    model: type[M],
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    env: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    error: type[ConfigError] = ConfigError,
    what: str = "config",
    secrets: Collection[str] = (),
    resolve: Callable[[LayeredConfig], None] | None = None,
) -> M:
    """Resolve ``model`` from layers: defaults <- YAML ``path`` <- environment <- ``overrides``.

    The one loader every configuration uses (ingest, training runs, recipes, service settings).
    ``overrides`` are ``key.path=value`` strings as typed on a command line (values parsed as YAML)
    or a nested mapping; ``env`` maps variable names to dotted fields, read from ``environ``
    (default: the process environment). ``resolve`` may lay further layers once the tree is known
    (a run's ``recipe_file``). Any problem raises ``error`` (a :class:`ConfigError`) with one line
    per problem naming the override, variable or file and the field, e.g.
    ``override steps=abc: steps: Input should be a valid integer``; ``secrets`` are never echoed.
    """
    layers = LayeredConfig(error=error, what=what)
    if path is not None:
        layers.lay_file(path)
    if env:
        layers.lay_environment(env, os.environ if environ is None else environ)
    layers.lay_overrides(overrides)
    if resolve is not None:
        resolve(layers)
    return layers.validate(model, secrets=secrets)
