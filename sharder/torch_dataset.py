"""Read a radforge dataset from your own PyTorch or MONAI code: datasets, collate-safe samples, volumes.

A stock ``streaming.StreamingDataset`` reads a radforge dataset, but its samples do not go through
a plain ``DataLoader``: images differ in dtype and shape, and ``meta`` holds ``None`` for unknown
values, which ``default_collate`` refuses. The datasets here turn each stored sample into

- ``image``: a float32 tensor ``(1, H, W)`` holding the **stored values, not rescaled**: Hounsfield
  units for CT ``raw`` (int16), 0..255 for the uint8 windows (CT presets, MR ``pct``), scanner counts
  for MR ``raw`` (uint16). ``ScaleIntensityRange`` (MONAI) or ``transform=`` rescale it;
- ``key``: the sample key (``<series key>/<plane>/<slice index>/<window>``);
- ``meta``: a dict with always the same keys (:data:`STR_FIELDS`, :data:`INT_FIELDS`,
  :data:`FLOAT_FIELDS`, ``contrast``, ``pixel_spacing``, ``body_box``, ``height``, ``width``) and
  no ``None``: unknown strings are ``""``, unknown numbers NaN (floats) or -1 (ints),
  ``pixel_spacing`` a float64 tensor ``(2,)`` (row, column mm), ``body_box`` an int64 tensor
  ``(4,)`` (-1 when unknown), ``height``/``width`` the stored shape before any padding.

``pad_to=(H, W)`` pads every image at the bottom and right (so pixel coordinates and ``body_box``
stay valid) with the background value (:func:`background_value`), so batches of mixed shapes
collate; an image larger than ``pad_to`` is an error naming it (resize it with ``transform=``).
``transform`` is applied to the image tensor (before padding), ``sample_transform`` to the whole
sample dict (last). ``modality``/``plane``/``window`` keep only matching samples.

:class:`RadforgeDataset` is map-style (random access through streaming's ``StreamingDataset``:
shards are fetched and decompressed on first use); :class:`RadforgeIterableDataset` streams with
streaming's shuffling and splits samples between ``DataLoader`` workers (each sample once per
epoch). The MONAI variants (:class:`RadforgeMonaiDataset`, :class:`RadforgeMonaiIterableDataset`)
yield the image as a ``monai.data.MetaTensor`` whose affine carries pixel spacing, slice spacing and
orientation (RAS, as MONAI expects; see :func:`slice_affine`); MONAI is imported only by them.
Every dataset gives back streaming's shared memory when collected, or at once with ``close()`` or
on leaving a ``with`` block (a process that opens many keeps no descriptors per dataset).

:func:`read_series_volume` rebuilds one series' volume from its slices (``radforge dataset
export-nifti``).

Geometry: ingest brings every volume to one canonical orientation (``radforge.ingest.volume``:
axes (z, y, x) toward patient Superior, Posterior, Left) and cuts planes from it; a plane's slices
are stacked along its normal. The dataset keeps spacings and orientation but no absolute
position (nothing below the series key is stored), so affines here put the series' first slice at
the origin.
"""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Self, TypedDict, Unpack

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from radforge.sharder.catalog import DatasetError, load_catalog
from radforge.sharder.mixing import MixSpec, SourceSpec, build_streams
from radforge.sharder.stream_memory import release_stream, release_when_collected
from radforge.storage import read_bytes, resolve

STR_FIELDS: Final = (
    "schema",
    "series_key",
    "study_key",
    "archive_id",
    "source_format",
    "modality",
    "plane",
    "window",
    "body_part",
    "manufacturer",
    "sex",
    "age_bucket",
)
INT_FIELDS: Final = ("slice_index", "series_length", "fg_patch")
FLOAT_FIELDS: Final = ("slice_spacing", "slice_thickness", "fg_fraction", "kvp", "gantry_tilt_deg")
# DICOM's air floor: what CT raw images are padded with and dropped CT slices are filled with.
CT_AIR_HU: Final = -1024.0

# LPS directions of (slice normal, row, column) of each plane's slices (radforge.ingest.volume):
# axial array[k] rows toward Posterior, columns toward Left; coronal and sagittal rows toward Inferior.
PLANE_AXES: Final[dict[str, tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]]] = {
    "axial": ((0, 0, 1), (0, 1, 0), (1, 0, 0)),
    "coronal": ((0, 1, 0), (0, 0, -1), (1, 0, 0)),
    "sagittal": ((1, 0, 0), (0, 0, -1), (0, 1, 0)),
}
_LPS_TO_RAS: Final = np.diag([-1.0, -1.0, 1.0])
# Rank variables streaming reads; a user's script has no launcher to set them (kept if set).
_SINGLE_PROCESS_RANKS: Final = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "LOCAL_RANK": "0"}


class SampleShapeError(ValueError):
    """An image does not fit the requested ``pad_to`` size; the message names the sample and sizes."""


def background_value(modality: str, window: str) -> float:
    """The value of empty space in a stored image: -1024 HU for CT ``raw``, 0 for every other image."""
    return CT_AIR_HU if (modality, window) == ("CT", "raw") else 0.0


def collate_safe_meta(meta: dict[str, Any], *, shape: tuple[int, int]) -> dict[str, Any]:
    """``meta`` with a fixed set of keys and no ``None``, so ``default_collate`` batches it.

    Strings default to ``""``, ints to -1, floats to NaN; ``contrast`` becomes 1/0/-1 (yes, no,
    unknown); spacing and box become tensors; ``height``/``width`` are the stored image shape.
    """
    out: dict[str, Any] = {f: str(meta.get(f) or "") for f in STR_FIELDS}
    out.update({f: -1 if meta.get(f) is None else int(meta[f]) for f in INT_FIELDS})
    out.update({f: math.nan if meta.get(f) is None else float(meta[f]) for f in FLOAT_FIELDS})
    contrast = meta.get("contrast")
    out["contrast"] = -1 if contrast is None else int(bool(contrast))
    spacing = meta.get("pixel_spacing") or [math.nan, math.nan]
    out["pixel_spacing"] = torch.tensor([float(s) for s in spacing], dtype=torch.float64)
    out["body_box"] = torch.tensor(meta.get("body_box") or [-1, -1, -1, -1], dtype=torch.int64)
    out["height"], out["width"] = int(shape[0]), int(shape[1])
    return out


def slice_affine(meta: dict[str, Any]) -> np.ndarray:
    """The 4x4 RAS affine of one slice: (row, column, slice normal) voxel index -> millimetres.

    Columns are the row and column directions times the pixel spacing and the slice normal times
    the slice spacing; the translation puts the slice at ``slice_index`` slices along its normal
    from the series' first slice (absolute positions are not stored).
    """
    normal, row, col = (np.asarray(a, dtype=np.float64) for a in PLANE_AXES[meta["plane"]])
    row_mm, col_mm = (float(s) for s in meta["pixel_spacing"])
    step = float(meta["slice_spacing"])
    aff = np.eye(4)
    aff[:3, 0] = _LPS_TO_RAS @ row * row_mm
    aff[:3, 1] = _LPS_TO_RAS @ col * col_mm
    aff[:3, 2] = _LPS_TO_RAS @ normal * step
    aff[:3, 3] = _LPS_TO_RAS @ normal * step * int(meta["slice_index"])
    return aff


def pad_image(image: torch.Tensor, size: tuple[int, int], *, value: float, key: str) -> torch.Tensor:
    """Pad a ``(C, H, W)`` image at the bottom and right to ``size`` with ``value``."""
    h, w = image.shape[-2:]
    if h > size[0] or w > size[1]:
        raise SampleShapeError(
            f"sample {key}: image of {h}x{w} does not fit pad_to={size[0]}x{size[1]}; "
            "give a larger pad_to or resize in transform="
        )
    return torch.nn.functional.pad(image, (0, size[1] - w, 0, size[0] - h), value=value)


@dataclass(frozen=True)
class SampleFilter:
    """Keep samples whose modality, plane and window match (``None``: any)."""

    modality: str | None = None
    plane: str | None = None
    window: str | None = None

    def __call__(self, meta: dict[str, Any]) -> bool:
        return all(
            want is None or meta.get(name) == want
            for name, want in (("modality", self.modality), ("plane", self.plane), ("window", self.window))
        )


class SampleConverter:
    """A stored sample -> ``{"image", "key", "meta"}`` (see the module docstring); picklable for workers."""

    def __init__(
        self,
        *,
        transform: Callable[[Any], Any] | None = None,
        sample_transform: Callable[[dict[str, Any]], Any] | None = None,
        pad_to: tuple[int, int] | None = None,
        metatensor: bool = False,
    ) -> None:
        self.transform, self.sample_transform = transform, sample_transform
        self.pad_to = None if pad_to is None else (int(pad_to[0]), int(pad_to[1]))
        self.metatensor = metatensor

    def __call__(self, raw: dict[str, Any]) -> Any:
        stored = raw["image"]
        meta = collate_safe_meta(raw["meta"], shape=stored.shape)
        image: Any = torch.from_numpy(stored.astype(np.float32))[None]
        if self.metatensor:
            image = _metatensor(image, raw["meta"], meta)
        if self.transform is not None:
            image = self.transform(image)
        if self.pad_to is not None:
            value = background_value(meta["modality"], meta["window"])
            image = pad_image(image, self.pad_to, value=value, key=raw["key"])
        sample = {"image": image, "key": raw["key"], "meta": meta}
        return sample if self.sample_transform is None else self.sample_transform(sample)


def _metatensor(image: torch.Tensor, meta: dict[str, Any], safe: dict[str, Any]) -> Any:
    """``image`` as a MONAI ``MetaTensor`` with the slice's RAS affine and the collate-safe meta."""
    from monai.data import MetaTensor

    affine = torch.from_numpy(slice_affine(meta))
    return MetaTensor(image, affine=affine, meta={**safe, "space": "RAS", "original_affine": affine})


def open_stream(uri: str, *, part: str | None = None, cache_dir: str | None = None, **kwargs: Any) -> Any:
    """A stock ``StreamingDataset`` over the dataset (or one committed part) at ``uri``.

    Checks the schema version first. A local dataset is read in place (streaming decompresses
    shards next to the compressed ones, as training does); a remote one is cached under
    ``cache_dir`` (default: a new temporary folder, so two readers never share a cache, removed
    when the stream is garbage-collected in the process that made it). The stream's shared memory
    is given back when it is collected (:func:`release_when_collected`) or at once with
    :func:`release_stream`.
    """
    from streaming import StreamingDataset

    for name, value in _SINGLE_PROCESS_RANKS.items():
        os.environ.setdefault(name, value)
    temporary = cache_dir is None and not resolve(uri).is_local
    if temporary:
        cache_dir = tempfile.mkdtemp(prefix="radforge-cache-")
    streams = build_streams(MixSpec(sources=[SourceSpec(uri=uri, part=part)]), cache_dir=cache_dir or "")
    kwargs.setdefault("predownload", 8 * int(kwargs.get("batch_size") or 1))  # streaming's default, unlogged
    stream = StreamingDataset(streams=streams, **kwargs)
    release_when_collected(stream)
    if temporary:
        weakref.finalize(stream, _remove_cache, str(cache_dir), owner=os.getpid())
    return stream


def _remove_cache(folder: str, *, owner: int) -> None:
    """Remove a temporary cache, only in the process that made it (a forked worker's copy dies first)."""
    if os.getpid() == owner:
        shutil.rmtree(folder, ignore_errors=True)


class ReadOptions(TypedDict, total=False):
    """Keyword options of every dataset here (see the module docstring)."""

    part: str | None  # one committed part of the dataset (default: all parts)
    cache_dir: str | None  # where a remote dataset's shards are cached (default: a new temporary folder)
    transform: Callable[[Any], Any] | None  # applied to the image tensor, before padding
    sample_transform: Callable[[dict[str, Any]], Any] | None  # applied to the sample dict, last
    pad_to: tuple[int, int] | None  # (H, W): pad every image at the bottom and right to this size
    modality: str | None  # keep only this modality (CT, MR)
    plane: str | None  # keep only this plane (axial, coronal, sagittal)
    window: str | None  # keep only this window (raw, a CT preset, pct)


class _SampleSource:
    """What the datasets share: the stock stream, the sample converter and the filter."""

    metatensor = False

    def __init__(self, uri: str, options: ReadOptions, **stream_options: Any) -> None:
        unknown = sorted(set(options) - set(ReadOptions.__annotations__))
        if unknown:
            valid = ", ".join(ReadOptions.__annotations__)
            raise TypeError(f"{type(self).__name__}: unknown option(s) {', '.join(unknown)}; valid: {valid}")
        part, cache_dir = options.get("part"), options.get("cache_dir")
        self.stream = open_stream(uri, part=part, cache_dir=cache_dir, **stream_options)
        self.convert = SampleConverter(
            transform=options.get("transform"),
            sample_transform=options.get("sample_transform"),
            pad_to=options.get("pad_to"),
            metatensor=self.metatensor,
        )
        self.keep = SampleFilter(options.get("modality"), options.get("plane"), options.get("window"))

    def close(self) -> None:
        """Give back the stream's shared memory now (also done when the dataset is collected).

        The dataset cannot be read afterwards; closing twice is harmless.
        """
        release_stream(self.stream)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RadforgeDataset(_SampleSource, Dataset[Any]):
    """Map-style dataset of a radforge dataset's samples (random access; options: :class:`ReadOptions`).

    With a filter (``modality``, ``plane``, ``window``) the constructor reads every sample once to
    find the matching ones; without one, nothing is read until a sample is asked for.
    """

    def __init__(self, uri: str, **options: Unpack[ReadOptions]) -> None:
        super().__init__(uri, options, shuffle=False, batch_size=1)
        n = int(self.stream.num_samples)
        everything = self.keep == SampleFilter()
        self.ids = [i for i in range(n) if everything or self.keep(self.stream[i]["meta"])]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Any:
        return self.convert(self.stream[self.ids[index]])


class RadforgeIterableDataset(_SampleSource, IterableDataset[Any]):
    """Streaming dataset of a radforge dataset's samples: shuffled (``seed``), split between workers.

    Each ``DataLoader`` worker reads its own share of the samples, so every sample is yielded once
    per epoch whatever ``num_workers``. Give the ``DataLoader``'s ``batch_size`` here too: streaming
    deals whole batches to workers (with another value an epoch still yields every sample once).
    Filters skip non-matching samples as they stream by. Other options: :class:`ReadOptions`.
    One instance may be iterated in this process and by ``DataLoader`` workers in turn.
    """

    def __init__(
        self,
        uri: str,
        *,
        shuffle: bool = True,
        seed: int = 0,
        batch_size: int = 1,
        **options: Unpack[ReadOptions],
    ) -> None:
        super().__init__(uri, options, shuffle=shuffle, shuffle_seed=seed, batch_size=batch_size)
        self._pid = os.getpid()

    def __iter__(self) -> Iterator[Any]:
        if os.getpid() != self._pid:
            # streaming makes per-process state on its first iteration (the barrier's file lock,
            # a thread pool, an event) and a DataLoader worker forked after this process iterated
            # inherits it: a lock filelock refuses ("inherited across fork"), a pool whose threads
            # do not exist here (a hang). Drop them so streaming makes this process its own.
            vars(self.stream._shared_barrier).pop("lock", None)
            vars(self.stream).pop("_executor", None)
            vars(self.stream).pop("_event", None)
            self._pid = os.getpid()
        for raw in self.stream:
            if self.keep(raw["meta"]):
                yield self.convert(raw)


class RadforgeMonaiDataset(RadforgeDataset):
    """:class:`RadforgeDataset` whose images are MONAI ``MetaTensor`` (affine: :func:`slice_affine`)."""

    metatensor = True


class RadforgeMonaiIterableDataset(RadforgeIterableDataset):
    """:class:`RadforgeIterableDataset` yielding MONAI ``MetaTensor`` images (see :func:`slice_affine`)."""

    metatensor = True


# ---- one series' volume (radforge dataset export-nifti) -------------------------------------------


@dataclass(frozen=True)
class SeriesVolume:
    """One series' slices in one plane and window, stacked along the plane's normal.

    ``array`` is ``(slice, row, column)`` in the stored dtype with ``series_length`` slices; a slice
    that ingest dropped as empty is filled with ``fill`` at its own position (``kept`` says which
    were stored). ``affine`` maps NIfTI voxel indices ``(column, row, slice)`` to RAS millimetres.
    ``uniform_spacing`` is false when the acquisition had gaps or uneven increments (the manifest's
    plane rule says so): slices are then stacked one median spacing apart.
    """

    array: np.ndarray
    kept: np.ndarray  # bool per slice
    spacing: tuple[float, float, float]  # (slice, row, column) mm
    affine: np.ndarray
    plane: str
    window: str
    fill: float
    uniform_spacing: bool = True


@dataclass(frozen=True)
class SeriesRecord:
    """Where a series is stored and how ingest cut it, from its manifest row."""

    part: str
    acquired_plane: str | None  # None: a manifest written before the plane policy
    uniform_spacing: bool


def find_series(uri: str, series_key: str) -> SeriesRecord:
    """The committed part holding ``series_key`` and its plane rule, from the manifests (no shard is read)."""
    import pyarrow.parquet as pq

    root = resolve(uri)
    for part in load_catalog(root, must_exist=True).parts:
        rows = pq.read_table(io.BytesIO(read_bytes(root.join(part["manifest"])))).to_pylist()
        for row in rows:
            if row["series_key"] == series_key and row["status"] == "ingested":
                rule = row.get("plane_rule") or ""
                acquired = re.match(r"acquired (axial|coronal|sagittal)", rule)
                return SeriesRecord(
                    part=str(part["id"]),
                    acquired_plane=acquired.group(1) if acquired else None,
                    uniform_spacing="uneven" not in rule,
                )
    raise DatasetError(f"{root.uri} has no ingested series {series_key!r} (see its manifests/ for the keys)")


def read_series_volume(
    uri: str,
    series_key: str,
    *,
    plane: str | None = None,
    window: str = "raw",
    fill: float | None = None,
    cache_dir: str | None = None,
) -> SeriesVolume:
    """Rebuild one series' volume from its stored slices (reads only the part that holds it).

    ``plane`` defaults to the acquired (native) plane the manifest records, else axial when stored
    (the canonical volume's own slices), else the first stored plane. Empty slices that ingest
    dropped keep their positions and are filled with ``fill`` (default :func:`background_value`:
    -1024 HU for CT raw, else 0).
    """
    record = find_series(uri, series_key)
    stream = open_stream(uri, part=record.part, cache_dir=cache_dir, shuffle=False, batch_size=1)
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    try:
        for i in range(int(stream.num_samples)):
            sample = stream[i]
            meta = sample["meta"]
            if meta["series_key"] == series_key:
                found.setdefault((meta["plane"], meta["window"]), []).append(sample)
    finally:
        release_stream(stream)
    planes = sorted({p for p, _ in found}, key=lambda p: (p != record.acquired_plane, p != "axial", p))
    chosen = plane or (planes[0] if planes else None)
    samples = found.get((chosen or "", window))
    if not samples:
        stored = ", ".join(f"{p}/{w}" for p, w in sorted(found)) or "none"
        raise DatasetError(
            f"series {series_key!r} has no {chosen or 'stored'} slices in window {window!r}; stored: {stored}"
        )
    return _stack(samples, fill=fill, uniform_spacing=record.uniform_spacing)


def _stack(samples: list[dict[str, Any]], *, fill: float | None, uniform_spacing: bool) -> SeriesVolume:
    """Stack one series' slices of one plane and window at their indices (see :class:`SeriesVolume`)."""
    meta = samples[0]["meta"]
    image = samples[0]["image"]
    value = background_value(meta["modality"], meta["window"]) if fill is None else float(fill)
    n = int(meta["series_length"])
    array = np.full((n, *image.shape), value, dtype=image.dtype)
    kept = np.zeros(n, dtype=bool)
    for s in samples:
        array[s["meta"]["slice_index"]] = s["image"]
        kept[s["meta"]["slice_index"]] = True
    aff = slice_affine({**meta, "slice_index": 0})
    # NIfTI voxel axes (column, row, slice): the conventional (x, y, z) order for axial slices
    affine = aff[:, [1, 0, 2, 3]]
    row_mm, col_mm = (float(s) for s in meta["pixel_spacing"])
    spacing = (float(meta["slice_spacing"]), row_mm, col_mm)
    return SeriesVolume(array, kept, spacing, affine, meta["plane"], meta["window"], value, uniform_spacing)


def write_nifti(volume: SeriesVolume, out: str) -> None:
    """Write ``volume`` as NIfTI-1 (``.nii`` or ``.nii.gz``) with its affine as qform and sform."""
    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(volume.array.transpose(2, 1, 0)), volume.affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(volume.affine, code=1)  # scanner-anatomical, relative to the series' first slice
    img.set_sform(volume.affine, code=1)
    nib.save(img, out)
