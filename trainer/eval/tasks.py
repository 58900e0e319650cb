"""Evaluation task datasets: one folder per task, a ``task.json`` and labelled slices (docs/eval.md).

A task is either 2D (one label per slice) or 3D (one label per volume; every slice of the volume
carries it and the track averages their features). Two sources:

- ``parquet``: ``samples.parquet`` with columns ``image`` (``.npy`` bytes of one 2D slice, stored
  dtype: int16 HU, uint8 window, uint16 MR), ``modality`` (CT | MR), ``window`` (raw | preset | pct),
  ``label`` (class index or float), ``split`` (train | val | test), ``volume`` (3D: volume id) and
  optionally ``mask`` (``.npy`` bytes, same shape as the image; pooling ``mask_mean``);
- ``mds``: slices from a dataset written by ``radforge ingest`` (``dataset`` in task.json, relative
  to the task folder or absolute) and ``labels.parquet`` with ``key`` (2D: a sample key) or
  ``series_key`` (3D: every slice of the series in ``plane`` / ``window``), ``label``, ``split``.

So NIfTI and DICOM folders are evaluated by ingesting them, then labelling their keys.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from radforge.files import FileRefused, read_bounded_text

TASK_FILE = "task.json"
SAMPLES = "samples.parquet"
LABELS = "labels.parquet"
SPLITS = ("train", "val", "test")
POOLINGS = ("cls", "patch_mean", "cls_patch_mean", "mask_mean")
Track = Literal["2d", "3d"]
Kind = Literal["classification", "regression"]


class TaskError(ValueError):
    """A task folder or suite spec is invalid; the message names the file and what is expected."""


@dataclass(frozen=True)
class TaskSpec:
    """What ``task.json`` declares."""

    name: str
    track: Track
    kind: Kind
    classes: tuple[str, ...] = ()  # classification: names of label indices 0..C-1
    pooling: str = "cls"  # slice feature: cls | patch_mean | cls_patch_mean | mask_mean
    description: str = ""

    @property
    def primary(self) -> str:
        """The metric the report and benchmarks rank by (higher is better)."""
        return "accuracy" if self.kind == "classification" else "r2"


@dataclass
class TaskData:
    """Every slice of a task, in memory. For 3D tasks slices are grouped by ``volumes``."""

    spec: TaskSpec
    images: list[np.ndarray]
    modality: list[str]
    window: list[str]
    labels: np.ndarray  # (N,) int64 class index or float64 target, per slice
    splits: np.ndarray  # (N,) str: train | val | test
    volumes: np.ndarray | None = None  # (N,) str volume id (3D)
    masks: list[np.ndarray | None] = field(default_factory=list)
    fingerprint: str = ""  # content hash: part of the feature-cache key

    def __len__(self) -> int:
        return len(self.images)


INDEX_LIMIT = 64 << 20  # an MDS task's index.json: a few KiB per shard


def npy_bytes(array: np.ndarray) -> bytes:
    """``np.save`` bytes of an array (how parquet tasks store images and masks)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _from_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _read_spec(folder: Path) -> tuple[TaskSpec, dict[str, Any]]:
    path = folder / TASK_FILE
    try:
        obj = json.loads(read_bounded_text(path))
    except FileNotFoundError:
        raise TaskError(f"{path} does not exist: a task folder holds task.json (see docs/eval.md)") from None
    except FileRefused as err:
        raise TaskError(f"{path} is not read: {err}") from None
    except ValueError as err:
        raise TaskError(f"{path} is not valid JSON ({err})") from err
    for key, valid in (("track", ("2d", "3d")), ("kind", ("classification", "regression"))):
        if obj.get(key) not in valid:
            raise TaskError(f"{path}: {key}={obj.get(key)!r}; valid: {', '.join(valid)}")
    pooling = obj.get("pooling", "cls")
    if pooling not in POOLINGS:
        raise TaskError(f"{path}: pooling={pooling!r}; valid: {', '.join(POOLINGS)}")
    classes = tuple(obj.get("classes") or ())
    if obj["kind"] == "classification" and len(classes) < 2:
        raise TaskError(f"{path}: a classification task lists at least two classes")
    spec = TaskSpec(
        name=str(obj.get("name") or folder.name),
        track=obj["track"],
        kind=obj["kind"],
        classes=classes,
        pooling=pooling,
        description=str(obj.get("description", "")),
    )
    return spec, obj


def _fingerprint(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()


def _check(task: TaskData, where: Path) -> TaskData:
    spec, n = task.spec, len(task)
    if n == 0:
        raise TaskError(f"{where}: the task has no samples")
    bad = sorted(set(task.splits.tolist()) - set(SPLITS))
    if bad:
        raise TaskError(f"{where}: unknown split(s) {bad}; valid: {', '.join(SPLITS)}")
    for split in ("train", "test"):
        if not (task.splits == split).any():
            raise TaskError(f"{where}: no {split!r} samples")
    if spec.kind == "classification":
        labels = task.labels.astype(np.int64)
        if labels.min() < 0 or labels.max() >= len(spec.classes):
            raise TaskError(f"{where}: labels must be class indices 0..{len(spec.classes) - 1}")
        task.labels = labels
    else:
        task.labels = task.labels.astype(np.float64)
    if spec.track == "3d":
        if task.volumes is None:
            raise TaskError(f"{where}: a 3d task needs a volume id per slice (column 'volume')")
        for vol in np.unique(task.volumes):
            sel = task.volumes == vol
            if len(np.unique(task.labels[sel])) > 1 or len(np.unique(task.splits[sel])) > 1:
                raise TaskError(f"{where}: volume {vol!r} has slices with different labels or splits")
    if spec.pooling == "mask_mean" and (not task.masks or any(m is None for m in task.masks)):
        raise TaskError(f"{where}: pooling mask_mean needs a mask per slice (column 'mask')")
    return task


def _load_parquet(folder: Path, spec: TaskSpec) -> TaskData:
    import pyarrow.parquet as pq

    path = folder / SAMPLES
    if not path.is_file():
        raise TaskError(f"{path} does not exist (source 'parquet')")
    table = pq.read_table(path)
    missing = {"image", "modality", "label", "split"} - set(table.column_names)
    if missing:
        raise TaskError(f"{path} lacks column(s) {', '.join(sorted(missing))}")
    cols = table.to_pydict()
    n = table.num_rows
    masks = [None if m is None else _from_npy(m) for m in cols["mask"]] if "mask" in cols else []
    return TaskData(
        spec=spec,
        images=[_from_npy(b) for b in cols["image"]],
        modality=[str(m) for m in cols["modality"]],
        window=[str(w) for w in cols.get("window", ["raw"] * n)],
        labels=np.asarray(cols["label"]),
        splits=np.asarray(cols["split"], dtype=str),
        volumes=np.asarray(cols["volume"], dtype=str) if "volume" in cols else None,
        masks=masks,
        fingerprint=_fingerprint((folder / TASK_FILE).read_bytes(), path.read_bytes()),
    )


def read_mds(local: str | Path) -> list[dict[str, Any]]:
    """Every sample of a local MDS dataset, in index order, decoded by streaming's own MDS reader.

    Shards are read directly (no ``StreamingDataset``): streaming registers each local folder in
    shared memory that outlives the dataset object, so reading the same folder twice in one process
    (several tasks on one dataset) would collide.
    """
    import zstandard
    from streaming.base.format import reader_from_json

    root = Path(local)
    index = json.loads(read_bounded_text(root / "index.json", limit=INDEX_LIMIT))
    out: list[dict[str, Any]] = []
    for shard in index["shards"]:
        reader: Any = reader_from_json(str(root), None, shard)
        zipped = shard.get("zip_data")
        if zipped:
            packed = (root / zipped["basename"]).read_bytes()
            data = zstandard.ZstdDecompressor().decompress(packed, max_output_size=shard["raw_data"]["bytes"])
        else:
            data = (root / shard["raw_data"]["basename"]).read_bytes()
        offsets = np.frombuffer(data, np.uint32, count=shard["samples"] + 1, offset=4)
        out += [reader.decode_sample(data[a:b]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    return out


def _load_mds(folder: Path, spec: TaskSpec, obj: dict[str, Any]) -> TaskData:
    import pyarrow.parquet as pq

    from radforge.sharder.catalog import load_catalog
    from radforge.storage import resolve

    if "dataset" not in obj:
        raise TaskError(f"{folder / TASK_FILE}: source 'mds' needs 'dataset' (an ingested dataset folder)")
    dataset = Path(obj["dataset"])
    dataset = dataset if dataset.is_absolute() else (folder / dataset).resolve()
    load_catalog(resolve(str(dataset)), must_exist=True)  # DatasetError / SchemaVersionError name it
    labels_path = folder / LABELS
    if not labels_path.is_file():
        raise TaskError(f"{labels_path} does not exist (source 'mds')")
    rows = pq.read_table(labels_path).to_pydict()
    by = "series_key" if spec.track == "3d" else "key"
    if by not in rows or "label" not in rows or "split" not in rows:
        raise TaskError(f"{labels_path} needs columns {by}, label, split for a {spec.track} task")
    wanted = {k: (lab, sp) for k, lab, sp in zip(rows[by], rows["label"], rows["split"], strict=True)}
    plane, window = obj.get("plane", "axial"), obj.get("window", "raw")
    picked: list[tuple[str, int, dict[str, Any]]] = []
    for s in read_mds(dataset):
        meta = s["meta"]
        ident = meta["series_key"] if by == "series_key" else s["key"]
        if ident not in wanted:
            continue
        if by == "series_key" and (meta["plane"] != plane or meta["window"] != window):
            continue
        picked.append((ident, int(meta["slice_index"]), s))
    found = {p[0] for p in picked}
    if missing := sorted(set(wanted) - found):
        raise TaskError(f"{labels_path}: {len(missing)} {by}(s) not in {dataset}, e.g. {missing[0]!r}")
    picked.sort(key=lambda p: (p[0], p[1]))
    return TaskData(
        spec=spec,
        images=[p[2]["image"] for p in picked],
        modality=[str(p[2]["meta"]["modality"]) for p in picked],
        window=[str(p[2]["meta"]["window"]) for p in picked],
        labels=np.asarray([wanted[p[0]][0] for p in picked]),
        splits=np.asarray([wanted[p[0]][1] for p in picked], dtype=str),
        volumes=np.asarray([p[0] for p in picked], dtype=str) if by == "series_key" else None,
        fingerprint=_fingerprint(
            (folder / TASK_FILE).read_bytes(), labels_path.read_bytes(), (dataset / "index.json").read_bytes()
        ),
    )


def load_task(folder: str | Path) -> TaskData:
    """Read one task folder; raises :class:`TaskError` naming the file that is wrong."""
    folder = Path(folder)
    spec, obj = _read_spec(folder)
    source = obj.get("source", "parquet")
    if source == "parquet":
        task = _load_parquet(folder, spec)
    elif source == "mds":
        task = _load_mds(folder, spec, obj)
    else:
        raise TaskError(f"{folder / TASK_FILE}: source={source!r}; valid: parquet, mds")
    return _check(task, folder)


def write_parquet_task(
    folder: str | Path,
    spec: TaskSpec,
    *,
    images: Sequence[np.ndarray],
    modality: Sequence[str],
    labels: Sequence[float | int],
    splits: Sequence[str],
    window: Sequence[str] | None = None,
    volumes: Sequence[str] | None = None,
    masks: Sequence[np.ndarray] | None = None,
    source_volumes: Sequence[str] | None = None,
) -> Path:
    """Write a parquet task folder (what the built-in suite and converters produce).

    ``source_volumes`` (2D tasks) records the volume each slice came from in a ``source_volume``
    column the loader ignores: provenance, so a split by volume can be checked.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cols: dict[str, Any] = {
        "image": [npy_bytes(im) for im in images],
        "modality": list(modality),
        "window": list(window) if window is not None else ["raw"] * len(images),
        "label": list(labels),
        "split": list(splits),
    }
    if volumes is not None:
        cols["volume"] = list(volumes)
    if masks is not None:
        cols["mask"] = [npy_bytes(m) for m in masks]
    if source_volumes is not None:
        cols["source_volume"] = list(source_volumes)
    pq.write_table(pa.table(cols), folder / SAMPLES)
    meta = {
        "name": spec.name,
        "track": spec.track,
        "kind": spec.kind,
        "classes": list(spec.classes),
        "pooling": spec.pooling,
        "description": spec.description,
        "source": "parquet",
    }
    (folder / TASK_FILE).write_text(json.dumps(meta, indent=2))
    return folder


def find_tasks(spec: str | Path) -> list[Path]:
    """Task folders named by ``spec``: a task folder, a folder of task folders, or a YAML/JSON list.

    A suite file is ``{"tasks": [folder, ...]}`` (paths relative to the file). ``builtin`` is
    resolved by the caller (:func:`radforge.trainer.eval.builtin.build_builtin_suite`).
    """
    path = Path(spec)
    if path.is_file():
        import yaml

        try:
            obj = yaml.safe_load(read_bounded_text(path))
            entries = [Path(p) for p in obj["tasks"]]
        except (ValueError, KeyError, TypeError, yaml.YAMLError) as err:
            # the error's type only: a YAML error quotes the file's lines
            raise TaskError(
                f"{path} is not a suite file ({{tasks: [folder, ...]}}): {type(err).__name__}"
            ) from None
        return [p if p.is_absolute() else (path.parent / p).resolve() for p in entries]
    if (path / TASK_FILE).is_file():
        return [path]
    if path.is_dir():
        found = sorted(p.parent for p in path.glob(f"*/{TASK_FILE}"))
        if found:
            return found
    raise TaskError(
        f"no tasks at {spec!r}: give 'builtin', a task folder (task.json), a folder of task folders "
        f"or a suite file listing them"
    )
