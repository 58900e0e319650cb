"""Ingest: archives (DICOM, NIfTI) -> series -> HU/windowed, de-identified slices in MDS datasets (Ray Data).

The public surface is below; names are imported on first use, so ``import radforge.ingest`` does
not import Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from radforge.exports import lazy_exports

if TYPE_CHECKING:
    from radforge.ingest.config import IngestConfig, load_config
    from radforge.ingest.errors import IngestError, Reason, SourceError, Status
    from radforge.ingest.pipeline import IngestSummary, process_series, run_ingest

__all__ = [
    "IngestConfig",
    "IngestError",
    "IngestSummary",
    "Reason",
    "SourceError",
    "Status",
    "load_config",
    "process_series",
    "run_ingest",
]

__getattr__ = lazy_exports(
    __name__,
    {
        "IngestConfig": "config",
        "load_config": "config",
        "IngestError": "errors",
        "Reason": "errors",
        "SourceError": "errors",
        "Status": "errors",
        "IngestSummary": "pipeline",
        "process_series": "pipeline",
        "run_ingest": "pipeline",
    },
)
