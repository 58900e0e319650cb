"""Slicing a volume into samples: empty-slice filter per modality, windows, keys and meta."""

from __future__ import annotations

import numpy as np

from radforge.ingest.config import IngestConfig
from radforge.ingest.slicer import SliceCounts, volume_samples
from radforge.ingest.volume import Volume
from radforge.synthetic import ct_phantom, mr_phantom


def _samples(ph, modality: str, windows: list[str]) -> tuple[list[dict], SliceCounts]:
    vol = Volume(array=ph.array, spacing=ph.spacing, origin=(0.0, 0.0, 0.0))
    counts = SliceCounts()
    out = list(
        volume_samples(
            vol,
            modality=modality,
            series_key="s",
            planes=["axial"],
            windows=windows,
            content=IngestConfig().content,
            base_meta={},
            counts=counts,
        )
    )
    return out, counts


def test_mr_air_slices_at_the_scan_ends_are_dropped() -> None:
    ph = mr_phantom(shape=(16, 64, 64), seed=1)
    body = [k for k in range(16) if (ph.labels[k] > 0).mean() > IngestConfig().content.min_foreground]
    out, counts = _samples(ph, "MR", ["raw"])
    assert sorted(s["meta"]["slice_index"] for s in out) == body
    assert counts.dropped_slices == 16 - len(body) > 0


def test_ct_keys_meta_and_windows() -> None:
    ph = ct_phantom(shape=(8, 64, 64), seed=2)
    out, counts = _samples(ph, "CT", ["raw", "lung"])
    assert len(out) == 2 * counts.kept_slices
    raw = [s for s in out if s["meta"]["window"] == "raw"]
    assert all(s["image"].dtype == np.int16 for s in raw)
    assert all(s["image"].dtype == np.uint8 for s in out if s["meta"]["window"] == "lung")
    assert len({s["key"] for s in out}) == len(out)
    assert raw[0]["key"] == f"s/axial/{raw[0]['meta']['slice_index']:05d}/raw"
