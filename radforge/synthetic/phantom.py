"""Anatomy-like CT and MR phantoms, deterministic from a seed.

A phantom is a canonical volume indexed (z, y, x): x increases toward patient Left, y toward
Posterior, z toward Superior (DICOM LPS). It has a body outline smaller than the field of view
(air around it, and a couple of pure-air slices at both ends of z so an empty-slice filter has
something to drop), subcutaneous fat, muscle, a spine with a spinal canal, a ring of ribs in the
thorax, two lungs in the upper part of z, a liver on the patient's right, two kidneys, and an
optional lesion. A label map says which structure each voxel belongs to, so tests can check
intensities per structure and the trainer can use them as segmentation targets.

Every structure is an ellipse in (y, x) whose size follows a profile along z, so building a
volume costs a handful of vectorised comparisons per voxel: 64x128x128 takes a few tens of
milliseconds, 200x512x512 a few seconds (most of it drawing the noise).

Intensities are whole numbers (CT in HU, MR in arbitrary positive units) so that a lossless
DICOM round trip reproduces them exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

__all__ = ["Label", "Phantom", "ct_phantom", "mr_phantom"]


class Label(IntEnum):
    """Values of :attr:`Phantom.labels`."""

    BACKGROUND = 0  # air outside the body
    BODY = 1  # fat, muscle, spinal canal: everything soft not listed below
    BONE = 2
    LUNG = 3
    LIVER = 4
    KIDNEY = 5
    LESION = 6


class _Tissue(IntEnum):
    """Finer classes than the labels: each gets its own intensity per modality."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    CANAL = 3
    CORTICAL = 4
    MARROW = 5
    RIB = 6
    LUNG = 7
    LIVER = 8
    KIDNEY = 9
    LESION = 10


_TISSUE_LABEL = np.array(
    [
        Label.BACKGROUND,  # AIR
        Label.BODY,  # FAT
        Label.BODY,  # MUSCLE
        Label.BODY,  # CANAL
        Label.BONE,  # CORTICAL
        Label.BONE,  # MARROW
        Label.BONE,  # RIB
        Label.LUNG,  # LUNG
        Label.LIVER,  # LIVER
        Label.KIDNEY,  # KIDNEY
        Label.LESION,  # LESION
    ],
    dtype=np.uint8,
)

# Mean HU per tissue (lesion filled per phantom). Chosen inside the textbook ranges and far enough
# apart that each label is recognisable after noise: fat -100, muscle 45, liver 65, kidney 160
# (enhanced cortex), marrow 450, cortical bone 1000.
_CT_HU = {
    _Tissue.AIR: -1000.0,
    _Tissue.FAT: -100.0,
    _Tissue.MUSCLE: 45.0,
    _Tissue.CANAL: 10.0,
    _Tissue.CORTICAL: 1000.0,
    _Tissue.MARROW: 450.0,
    _Tissue.RIB: 750.0,
    _Tissue.LUNG: -850.0,
    _Tissue.LIVER: 65.0,
    _Tissue.KIDNEY: 160.0,
}
_CT_LESION_HU = (10.0, 140.0)  # hypodense (cyst-like) or hyperenhancing
_CT_NOISE_HU = 8.0
_CT_HU_RANGE = (-1024.0, 3071.0)  # what a 12-bit CT scanner can store

# T1-weighted-like MR: bright fat, dark cortical bone and lung, liver brighter than muscle.
_MR_INTENSITY = {
    _Tissue.AIR: 0.0,
    _Tissue.FAT: 900.0,
    _Tissue.MUSCLE: 300.0,
    _Tissue.CANAL: 150.0,
    _Tissue.CORTICAL: 40.0,
    _Tissue.MARROW: 220.0,
    _Tissue.RIB: 60.0,
    _Tissue.LUNG: 30.0,
    _Tissue.LIVER: 420.0,
    _Tissue.KIDNEY: 250.0,
}
_MR_LESION_INTENSITY = (120.0, 750.0)
_MR_NOISE = 12.0


@dataclass(frozen=True)
class Phantom:
    """A synthetic volume in canonical (z, y, x) LPS orientation with its label map."""

    array: np.ndarray  # (z, y, x) float32: HU for CT, positive intensities for MR
    labels: np.ndarray  # (z, y, x) uint8, values of Label
    spacing: tuple[float, float, float]  # (z, y, x) mm
    modality: str  # "CT" or "MR"
    has_lesion: bool
    lesion_volume_ml: float  # 0.0 when no lesion

    @property
    def shape(self) -> tuple[int, int, int]:
        """(z, y, x) shape of the volume."""
        z, y, x = self.array.shape
        return int(z), int(y), int(x)


@dataclass(frozen=True)
class _Ellipse:
    """An ellipse in (y, x) pixel coordinates whose scale follows a profile along normalised z."""

    tissue: _Tissue
    center: tuple[float, float]  # (y, x) pixels
    semi_axes: tuple[float, float]  # (y, x) pixels at scale 1
    profile: Callable[[np.ndarray], np.ndarray]  # normalised z in [0, 1] -> scale >= 0 (0: absent)


def _dome(center: float, half_height: float) -> Callable[[np.ndarray], np.ndarray]:
    """Ellipsoid-like profile: scale 1 at ``center``, 0 beyond ``center +- half_height``."""

    def profile(zn: np.ndarray) -> np.ndarray:
        t = (zn - center) / half_height
        return np.sqrt(np.clip(1.0 - t * t, 0.0, None))

    return profile


def _band(lo: float, hi: float) -> Callable[[np.ndarray], np.ndarray]:
    """Cylinder profile: scale 1 for ``lo <= zn <= hi``, 0 elsewhere."""

    def profile(zn: np.ndarray) -> np.ndarray:
        return ((zn >= lo) & (zn <= hi)).astype(np.float64)

    return profile


def _body_slices(nz: int) -> tuple[int, int]:
    """First and one-past-last z index holding anatomy; the rest is air (a couple of slices per end)."""
    margin = 2 if nz >= 10 else (1 if nz >= 4 else 0)
    return margin, nz - margin


def _anatomy(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
    lesion: bool,
    body_offset: tuple[float, float],
) -> np.ndarray:
    """Tissue map (z, y, x) uint8 of ``_Tissue`` values."""
    nz, ny, nx = shape
    jitter = rng.uniform(0.94, 1.06, size=8)
    cy = (ny - 1) / 2.0 + body_offset[0] * ny
    cx = (nx - 1) / 2.0 + body_offset[1] * nx
    ay = 0.30 * ny * jitter[0]  # anterior-posterior half-size: shorter than left-right
    ax = 0.40 * nx * jitter[1]

    z0, z1 = _body_slices(nz)
    zn = np.full(nz, -1.0)  # normalised z of body slices in [0, 1], -1 outside the body
    if z1 > z0:
        zn[z0:z1] = np.linspace(0.0, 1.0, z1 - z0) if z1 - z0 > 1 else 0.5

    def body_profile(z: np.ndarray) -> np.ndarray:
        return np.where(z >= 0.0, 0.9 + 0.1 * np.sin(np.pi * np.clip(z, 0.0, 1.0)), 0.0)

    lung_x = 0.42 * ax * jitter[2]
    structures = [
        _Ellipse(_Tissue.FAT, (cy, cx), (ay, ax), body_profile),
        _Ellipse(_Tissue.MUSCLE, (cy, cx), (0.86 * ay, 0.88 * ax), body_profile),
        # lungs, upper part of z (superior), left and right of the midline
        _Ellipse(_Tissue.LUNG, (cy - 0.05 * ay, cx - lung_x), (0.55 * ay, 0.30 * ax), _dome(0.74, 0.27)),
        _Ellipse(_Tissue.LUNG, (cy - 0.05 * ay, cx + lung_x), (0.55 * ay, 0.30 * ax), _dome(0.74, 0.27)),
        # liver on the patient's right (x decreases toward the right), below the lungs
        _Ellipse(
            _Tissue.LIVER,
            (cy - 0.12 * ay, cx - 0.33 * ax * jitter[3]),
            (0.50 * ay * jitter[4], 0.36 * ax),
            _dome(0.38, 0.17),
        ),
        # kidneys, posterior (y increases toward posterior)
        _Ellipse(_Tissue.KIDNEY, (cy + 0.40 * ay, cx - 0.38 * ax), (0.17 * ay, 0.12 * ax), _dome(0.30, 0.11)),
        _Ellipse(
            _Tissue.KIDNEY,
            (cy + 0.40 * ay, cx + 0.38 * ax * jitter[5]),
            (0.17 * ay, 0.12 * ax),
            _dome(0.30, 0.11),
        ),
        # spine: vertebral body (cortical rim around marrow) and the spinal canal behind it
        _Ellipse(_Tissue.CORTICAL, (cy + 0.52 * ay, cx), (0.17 * ay, 0.13 * ax), _band(0.0, 1.0)),
        _Ellipse(_Tissue.MARROW, (cy + 0.52 * ay, cx), (0.12 * ay, 0.09 * ax), _band(0.0, 1.0)),
        _Ellipse(_Tissue.CANAL, (cy + 0.76 * ay, cx), (0.07 * ay, 0.05 * ax), _band(0.0, 1.0)),
    ]

    yy = np.arange(ny, dtype=np.float32)[:, None]
    xx = np.arange(nx, dtype=np.float32)[None, :]
    tissue = np.zeros(shape, dtype=np.uint8)
    for s in structures:
        scale = s.profile(zn)
        zs = np.nonzero(scale > 0.0)[0]
        if zs.size == 0:
            continue
        r2 = ((yy - s.center[0]) / s.semi_axes[0]) ** 2 + ((xx - s.center[1]) / s.semi_axes[1]) ** 2
        lo, hi = int(zs[0]), int(zs[-1]) + 1
        inside = r2[None, :, :] <= (scale[lo:hi] ** 2)[:, None, None].astype(np.float32)
        tissue[lo:hi][inside] = s.tissue

    _add_ribs(tissue, zn, spacing, (cy, cx), (ay, ax), rng)
    if lesion:
        _add_lesion(tissue, spacing, min(ay * spacing[1], ax * spacing[2]), rng)
    return tissue


def _add_ribs(
    tissue: np.ndarray,
    zn: np.ndarray,
    spacing: tuple[float, float, float],
    center: tuple[float, float],
    semi_axes: tuple[float, float],
    rng: np.random.Generator,
) -> None:
    """Thoracic ribs: arcs of a ring just inside the fat, on slices that cut a rib (every ~25 mm)."""
    _, ny, nx = tissue.shape
    yy = np.arange(ny, dtype=np.float32)[:, None] - center[0]
    xx = np.arange(nx, dtype=np.float32)[None, :] - center[1]
    r = np.sqrt((yy / semi_axes[0]) ** 2 + (xx / semi_axes[1]) ** 2)
    angle = np.arctan2(yy / semi_axes[0], xx / semi_axes[1])
    # the ring is broken anteriorly (sternum gap) and posteriorly (where the spine is)
    arcs = np.abs(np.sin(angle)) < 0.85
    phase = rng.uniform(0.0, 2.0 * np.pi)
    z_mm = np.arange(tissue.shape[0]) * spacing[0]
    cuts_rib = np.sin(2.0 * np.pi * z_mm / 25.0 + phase) > -0.2
    for z in np.nonzero((zn >= 0.42) & (zn <= 0.97) & cuts_rib)[0]:
        scale = 0.9 + 0.1 * np.sin(np.pi * zn[z])
        ring = (r >= 0.78 * scale) & (r <= 0.84 * scale) & arcs
        tissue[z][ring] = _Tissue.RIB


def _add_lesion(
    tissue: np.ndarray, spacing: tuple[float, float, float], body_radius_mm: float, rng: np.random.Generator
) -> None:
    """Paint a sphere (in mm) centred in the liver, or in the body when the liver is out of view."""
    candidates = np.argwhere(tissue == _Tissue.LIVER)
    if candidates.size == 0:
        candidates = np.argwhere(tissue == _Tissue.MUSCLE)
    if candidates.size == 0:
        return
    center = candidates[rng.integers(len(candidates))]
    # scaled to the body (phantoms are small) but at least a voxel across in every axis
    radius = max(rng.uniform(0.12, 0.22) * body_radius_mm, 1.2 * max(spacing))
    half = [int(np.ceil(radius / s)) for s in spacing]
    lo = [max(int(c) - h, 0) for c, h in zip(center, half, strict=True)]
    hi = [min(int(c) + h + 1, n) for c, h, n in zip(center, half, tissue.shape, strict=True)]
    zz, yy, xx = (
        (np.arange(a, b, dtype=np.float32) - c) * s
        for a, b, c, s in zip(lo, hi, center, spacing, strict=True)
    )
    sphere = zz[:, None, None] ** 2 + yy[None, :, None] ** 2 + xx[None, None, :] ** 2 <= radius**2
    block = tissue[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    block[sphere & (block != _Tissue.AIR)] = _Tissue.LESION


def _build(
    modality: str,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    seed: int,
    lesion: bool | None,
    body_offset: tuple[float, float],
) -> Phantom:
    """Shared geometry for both modalities; intensities and noise are the modality's."""
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive sizes (z, y, x), got {shape!r}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive millimetre values (z, y, x), got {spacing!r}")
    shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    spacing = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    rng = np.random.default_rng(seed)
    want_lesion = bool(rng.random() < 0.5) if lesion is None else lesion
    tissue = _anatomy(shape, spacing, rng, want_lesion, body_offset)
    labels = _TISSUE_LABEL[tissue]
    lesion_voxels = int(np.count_nonzero(labels == Label.LESION))
    lesion_ml = lesion_voxels * spacing[0] * spacing[1] * spacing[2] / 1000.0

    lut = np.zeros(len(_Tissue), dtype=np.float32)
    if modality == "CT":
        for t, hu in _CT_HU.items():
            lut[t] = hu
        lut[_Tissue.LESION] = _CT_LESION_HU[int(rng.integers(2))]
        array = lut[tissue]
        array += rng.standard_normal(shape, dtype=np.float32) * np.float32(_CT_NOISE_HU)
        np.clip(array, *_CT_HU_RANGE, out=array)
    else:
        for t, value in _MR_INTENSITY.items():
            lut[t] = value
        lut[_Tissue.LESION] = _MR_LESION_INTENSITY[int(rng.integers(2))]
        signal = lut[tissue]
        signal *= _bias_field(shape, rng)  # smooth coil sensitivity, as real MR has
        # Rician noise: magnitude of a complex signal with Gaussian noise on both channels
        real = signal + rng.standard_normal(shape, dtype=np.float32) * np.float32(_MR_NOISE)
        imag = rng.standard_normal(shape, dtype=np.float32) * np.float32(_MR_NOISE)
        array = np.sqrt(real * real + imag * imag)
    np.rint(array, out=array)
    return Phantom(
        array=array.astype(np.float32, copy=False),
        labels=labels,
        spacing=spacing,
        modality=modality,
        has_lesion=lesion_voxels > 0,
        lesion_volume_ml=float(lesion_ml),
    )


def _bias_field(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field in [0.85, 1.15], separable so it costs one pass over the volume."""
    nz, ny, nx = shape
    fy = 1.0 + 0.1 * np.cos(np.linspace(0.0, np.pi, ny) + rng.uniform(0, np.pi))
    fx = 1.0 + 0.05 * np.cos(np.linspace(0.0, np.pi, nx) + rng.uniform(0, np.pi))
    return (fy[:, None] * fx[None, :]).astype(np.float32)[None, :, :]


def ct_phantom(
    *,
    shape: tuple[int, int, int] = (32, 128, 128),
    spacing: tuple[float, float, float] = (2.5, 0.8, 0.8),
    seed: int = 0,
    lesion: bool | None = None,
    body_offset: tuple[float, float] = (0.0, 0.0),
) -> Phantom:
    """Build a CT phantom in HU (whole numbers, -1024..3071).

    Air -1000 around an elliptical body (the first and last two slices are air only), fat about -100,
    muscle 45, liver 65, kidneys 160, lungs -850 in the upper part of z, bone 450-1000, and a lesion
    of 10 or 140 HU when ``lesion`` is true (``None``: decided by the seed). Gaussian noise of 8 HU.
    ``body_offset`` shifts the body by fractions of the field of view along (y, x), e.g. (0.3, 0.3)
    puts the anatomy toward the posterior-left corner.
    """
    return _build("CT", shape, spacing, seed, lesion, body_offset)


def mr_phantom(
    *,
    shape: tuple[int, int, int] = (32, 128, 128),
    spacing: tuple[float, float, float] = (2.5, 0.8, 0.8),
    seed: int = 0,
    lesion: bool | None = None,
    body_offset: tuple[float, float] = (0.0, 0.0),
) -> Phantom:
    """Build a T1-weighted-like MR phantom with the same anatomy as :func:`ct_phantom`.

    Intensities are non-negative whole numbers: background near 0 with Rician noise, bright fat
    (~900), liver ~420, muscle ~300, dark cortical bone and lungs, with a mild smooth bias field.
    """
    return _build("MR", shape, spacing, seed, lesion, body_offset)
