"""Which planes a volume is cut into: the plane policy, a pure decision per volume.

The acquired (native) plane's slices are the images the scanner reconstructed: always kept. The
other two planes are reformats: resampled across the slices, so they are only worth writing when
the volume is near-isotropic and the reformat is a real image, not a strip:

* ``auto`` (the default): the acquired plane; each other plane when the spacing is uniform, the
  slice spacing is at most ``max_anisotropy`` times the in-plane spacing, and the reformat's short
  side is at least ``min_side`` pixels;
* an explicit list (e.g. ``[axial, coronal]``): those planes; the acquired plane whenever listed,
  any other only when the spacing is uniform and its short side is at least ``min_side`` pixels
  (a 2D acquisition of 20 thick slices never becomes 512 slabs 20 pixels wide).

Uneven slice spacing (a missing slice, a variable increment) allows no reformat at all: the
acquired plane alone. :class:`PlaneChoice` says which planes and why; the manifest records it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from radforge.ingest.volume import PLANES, Plane, Volume

AUTO = "auto"


@dataclass(frozen=True)
class PlaneChoice:
    """The planes to cut a volume into, and the rule that chose them (for the manifest)."""

    planes: list[Plane]
    rule: str


def plane_short_side(vol: Volume, plane: Plane) -> int:
    """Short side in pixels of ``vol``'s slices in ``plane``, as ``plane_slices`` cuts them.

    Coronal and sagittal slices are resampled along z to square pixels; axial slices are not.
    """
    nz, ny, nx = vol.array.shape
    sz, sy, sx = vol.spacing
    if plane == "axial":
        return min(ny, nx)
    if plane == "coronal":
        return min(max(1, round(nz * sz / sx)), nx)
    return min(max(1, round(nz * sz / sy)), ny)


def choose_planes(
    vol: Volume, requested: Sequence[str], *, max_anisotropy: float, min_side: int
) -> PlaneChoice:
    """Apply the plane policy (module docstring) to one volume."""
    acquired = vol.acquired_plane
    axis = PLANES.index(acquired)
    slice_spacing = vol.spacing[axis]
    in_plane = min(s for a, s in enumerate(vol.spacing) if a != axis)
    auto = list(requested) == [AUTO]
    candidates: list[Plane] = [p for p in PLANES if p != acquired] if auto else [
        p for p in PLANES if p in requested and p != acquired
    ]
    keep_acquired = auto or acquired in requested
    if not vol.uniform_spacing:
        why = "uneven slice spacing: no reformats"
        return PlaneChoice([acquired] if keep_acquired else [], f"acquired {acquired}; {why}")
    reformats: list[Plane] = []
    notes = []
    anisotropic = slice_spacing > max_anisotropy * in_plane
    for plane in candidates:
        side = plane_short_side(vol, plane)
        if auto and anisotropic:
            ratio = f"{max_anisotropy:g} x {in_plane:.2f} mm"
            notes.append(f"{plane} not: slice spacing {slice_spacing:.2f} mm > {ratio}")
        elif side < min_side:
            notes.append(f"{plane} not: {side} px < min_side {min_side}")
        else:
            reformats.append(plane)
    planes = ([acquired] if keep_acquired else []) + reformats
    rule = f"acquired {acquired}" + (f"; reformats {', '.join(reformats)}" if reformats else "")
    return PlaneChoice([p for p in PLANES if p in planes], "; ".join([rule, *notes]))
