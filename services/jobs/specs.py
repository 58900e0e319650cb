"""From a submitted job to the spec its process runs: allowlists, and run configs resolved once.

Pure decisions plus reading a run YAML; the API layer turns :class:`SpecForbidden` into 403 and
:class:`SpecInvalid` into 422. Error messages never quote file contents or submitted values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from radforge.config import merge_mappings, parse_overrides
from radforge.files import FileRefused, read_bounded
from radforge.services.app.models import (
    EVAL_BUILTIN_TASKS,
    CompactJobCreate,
    EvalJobCreate,
    IngestJobCreate,
    TrainJobCreate,
    TrainJobSpec,
)
from radforge.services.app.security import UriError, check_uri, redact, uri_allowed, uri_below
from radforge.storage import canonical_uri, resolve

MAX_CONFIG_BYTES = 1 << 20
# Run-config fields the service decides, never a request.
SERVICE_OWNED = {
    "ray_address": "ray_address is set by the service (where jobs run), not per job",
    "output": "the run's output is output_uri; do not set output in the config",
}


@dataclass(frozen=True)
class Allowlists:
    """URI prefixes jobs may read from and write to (the service's settings)."""

    sources: Sequence[str]
    datasets: Sequence[str]
    configs: Sequence[str]


class SpecForbidden(Exception):
    """A URI outside its allowlist; ``field`` names where it was given."""

    def __init__(self, field: str, uri: str, allowlist: str) -> None:
        super().__init__(
            redact(f"{field}: {uri} is outside the allowed {allowlist} (setting allowed_{allowlist})")
        )
        self.field = field


class SpecInvalid(Exception):
    """A spec that does not validate; ``errors`` are (location below the body, message) pairs."""

    def __init__(self, errors: list[tuple[list[str | int], str]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in errors))
        self.errors = errors


def _check(field: str, uri: str, allowed: Sequence[str], name: str) -> None:
    if not uri_allowed(uri, allowed):
        raise SpecForbidden(field, uri, name)


def prepare_ingest(spec: IngestJobCreate, allow: Allowlists) -> IngestJobCreate:
    """An ingest spec runs as submitted, once its archive and dataset are inside the allowlists.

    A dataset inside its own archive is refused (compared with symlinks resolved): the next ingest
    of that archive would read the dataset's shards as archive objects.
    """
    _check("source_uri", spec.source_uri, allow.sources, "sources")
    _check("dataset_uri", spec.dataset_uri, allow.datasets, "datasets")
    if uri_below(canonical_uri(spec.dataset_uri), canonical_uri(spec.source_uri)):
        raise SpecInvalid([(["dataset_uri"], "the dataset is inside its source archive; write it elsewhere")])
    return spec


def _read_yaml(uri: str, *, loc: list[str | int]) -> dict[str, Any]:
    try:
        data = read_bounded(uri, limit=MAX_CONFIG_BYTES)
    except FileRefused as e:  # a device, FIFO or oversize file: refused unread (radforge.files)
        raise SpecInvalid([(loc, f"the file is refused: {e}")]) from None
    except (OSError, ValueError):
        raise SpecInvalid([(loc, "cannot read the file at this URI")]) from None
    try:
        tree = yaml.safe_load(data) or {}
    except yaml.YAMLError as e:
        raise SpecInvalid([(loc, f"not valid YAML ({type(e).__name__})")]) from None
    if not isinstance(tree, dict):
        raise SpecInvalid([(loc, "expected a mapping of settings at the top level")])
    return tree


def _field_names(model: type[BaseModel]) -> frozenset[str]:
    """Every field name of ``model`` and of the models nested in it (the names a schema publishes)."""
    names: set[str] = set()
    todo, seen = [model], set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        for name, info in m.model_fields.items():
            names.add(name)
            names.update(a for a in (info.alias,) if a)
            todo.extend(_models_in(info.annotation))
    return frozenset(names)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def file_safe_errors(
    err: ValidationError, model: type[BaseModel], *, where: str
) -> list[tuple[list[str | int], str]]:
    """Validation errors of a config that may come from a file the requester cannot read.

    A location is cut at its first part that is not a field of ``model`` (an unknown key is the
    file's, and a password file's keys are its secrets), and a message that quotes the bad value is
    replaced: nothing of the file's contents reaches the answer.
    """
    known = _field_names(model)
    out: list[tuple[list[str | int], str]] = []
    for e in err.errors():
        loc: list[str | int] = [where]
        for part in e["loc"]:
            if not isinstance(part, int) and part not in known:
                break
            loc.append(part)
        msg = "not a setting here" if e["type"] == "extra_forbidden" else e["msg"]
        value = e.get("input")
        if isinstance(value, str | int | float) and str(value) and str(value) in msg:
            msg = "invalid value"
        if (loc, msg) not in out:
            out.append((loc, msg))
    return out


def _relative_uri(base_file: str, name: str) -> str:
    """``name`` (a recipe file) relative to the folder of ``base_file``, unless absolute or a URI."""
    if "://" in name or name.startswith("/"):
        return check_uri(name)
    base = resolve(base_file)
    parent = base.uri.rsplit("/", 1)[0]
    return check_uri(f"{parent}/{name}")


def _refuse_service_owned(tree: dict[str, Any], *, field: str) -> None:
    errors: list[tuple[list[str | int], str]] = [
        ([field, key], msg) for key, msg in SERVICE_OWNED.items() if tree.get(key) is not None
    ]
    if errors:
        raise SpecInvalid(errors)


def resolve_run_tree(spec: TrainJobCreate, allow: Allowlists) -> dict[str, Any]:
    """The run config as a mapping: the file (or inline mapping), its recipe file, the overrides.

    Same layering as ``radforge train`` (:func:`radforge.trainer.run_config.load_train_config`): overrides
    over the file, then a ``recipe_file`` (relative to the run file) under the ``recipe:`` section.
    """
    if spec.config_uri is not None:
        where = "config_uri"
        _check(where, spec.config_uri, allow.configs, "configs")
        tree = _read_yaml(spec.config_uri, loc=[where])
        tree.pop("output", None)  # a file's output (e.g. .demo/run) gives way to output_uri
    else:
        where = "config"
        tree = dict(spec.config or {})
    try:
        extra = parse_overrides(spec.overrides, error=ValueError)
    except ValueError as e:
        raise SpecInvalid([(["overrides"], str(e))]) from None
    _refuse_service_owned(extra, field="overrides")
    _refuse_service_owned(tree, field=where)
    tree = merge_mappings(tree, extra)
    recipe_file = tree.get("recipe_file")
    if recipe_file:
        if not isinstance(recipe_file, str):
            raise SpecInvalid([([where, "recipe_file"], "expected a path or URI")])
        try:
            recipe_uri = (
                _relative_uri(spec.config_uri, recipe_file) if spec.config_uri else check_uri(recipe_file)
            )
        except UriError as e:
            raise SpecInvalid([([where, "recipe_file"], str(e))]) from None
        _check(f"{where}.recipe_file", recipe_uri, allow.configs, "configs")
        recipe = _read_yaml(recipe_uri, loc=[where, "recipe_file"])
        tree["recipe"] = merge_mappings(recipe, tree.get("recipe") or {})
        tree["recipe_file"] = recipe_uri
    return tree


def prepare_train(spec: TrainJobCreate, allow: Allowlists) -> TrainJobSpec:
    """Resolve and validate the run config; check its output and every dataset it reads."""
    _check("output_uri", spec.output_uri, allow.datasets, "datasets")
    where = "config_uri" if spec.config_uri is not None else "config"
    tree = resolve_run_tree(spec, allow)
    # imported once files are read and checked: the trainer's imports (torch) take seconds the first time
    from radforge.trainer.run_config import TrainConfig

    tree["output"] = spec.output_uri
    try:
        cfg = TrainConfig.model_validate(tree)
    except ValidationError as e:
        raise SpecInvalid(file_safe_errors(e, TrainConfig, where=where)) from None
    for i, source in enumerate(cfg.data.mix.sources):
        try:
            uri = check_uri(source.uri)
        except UriError as e:
            raise SpecInvalid([([where, "data", "mix", "sources", i, "uri"], str(e))]) from None
        _check(f"{where}.data.mix.sources[{i}].uri", uri, allow.datasets, "datasets")
    return TrainJobSpec(
        output_uri=spec.output_uri,
        config_uri=spec.config_uri,
        overrides=list(spec.overrides),
        run=cfg.model_dump(mode="json"),
    )


def prepare_eval(spec: EvalJobCreate, allow: Allowlists) -> EvalJobCreate:
    """An eval spec runs as submitted once what it reads and writes is inside ``allowed_datasets``.

    The backbone (a training output or an export), the task folders (labelled images) and the report
    folder are data like datasets and training outputs: one allowlist, as for train's output.
    """
    _check("backbone_uri", spec.backbone_uri, allow.datasets, "datasets")
    if spec.tasks != EVAL_BUILTIN_TASKS:
        _check("tasks", spec.tasks, allow.datasets, "datasets")
    _check("output_uri", spec.output_uri, allow.datasets, "datasets")
    return spec


def prepare_compact(spec: CompactJobCreate, allow: Allowlists) -> CompactJobCreate:
    """A compaction runs as submitted once its dataset is inside ``allowed_datasets``."""
    _check("dataset_uri", spec.dataset_uri, allow.datasets, "datasets")
    return spec
