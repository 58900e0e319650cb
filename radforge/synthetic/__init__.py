"""Synthetic archives for tests, the demo and benchmarks: phantoms, DICOM series, planted PHI.

Names are imported lazily, so ``from radforge.synthetic.phantom import ct_phantom`` (or
``from radforge.synthetic import ct_phantom``) needs numpy only: the trainer's tests use the phantoms
on machines without pydicom or nibabel.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from radforge.synthetic.archive import (
        ArchiveSpec,
        ExpectedSeries,
        build_synthetic_archive,
        build_uncompressed_ct_archive,
    )
    from radforge.synthetic.dicom import SeriesInfo, write_dicom_series
    from radforge.synthetic.phantom import Phantom, ct_phantom, mr_phantom
    from radforge.synthetic.phi import PlantedPHI
    from radforge.synthetic.sample import build_sample_archive

_MODULE_OF = {
    "ArchiveSpec": "archive",
    "ExpectedSeries": "archive",
    "build_sample_archive": "sample",
    "build_synthetic_archive": "archive",
    "build_uncompressed_ct_archive": "archive",
    "SeriesInfo": "dicom",
    "write_dicom_series": "dicom",
    "Phantom": "phantom",
    "ct_phantom": "phantom",
    "mr_phantom": "phantom",
    "PlantedPHI": "phi",
}

__all__ = [
    "ArchiveSpec",
    "ExpectedSeries",
    "Phantom",
    "PlantedPHI",
    "SeriesInfo",
    "build_sample_archive",
    "build_synthetic_archive",
    "build_uncompressed_ct_archive",
    "ct_phantom",
    "mr_phantom",
    "write_dicom_series",
]


def __getattr__(name: str) -> Any:
    """Import the public names on first use (PEP 562)."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'radforge.synthetic' has no attribute {name!r}")
    return getattr(importlib.import_module(f"radforge.synthetic.{module}"), name)
