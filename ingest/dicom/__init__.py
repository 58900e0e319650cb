"""DICOM reading for the ingest: one tag walker, one set of value converters, pixels and modality maths.

* :mod:`.tags` -- the tag walker over a standard file's top-level data set (discovery and decoding);
* :mod:`.values` -- value converters shared by the walker's raw bytes and pydicom's values;
* :mod:`.header` -- what decoding needs from a header (walker fast path, pydicom general path);
* :mod:`.pixels` -- Pixel Data to stored values (numpy for native syntaxes, plugins for compressed);
* :mod:`.rescale` -- stored values to modality units (pure functions);
* :mod:`.decode` -- one instance to :class:`Frames` (the entry point).
"""

from radforge.ingest.dicom.decode import (
    MAX_FRAMES,
    MAX_PIXELS_PER_FRAME,
    MAX_TOTAL_PIXELS,
    Frames,
    decode_file_fast,
    decode_instance,
)
from radforge.ingest.dicom.pixels import supported_transfer_syntaxes
from radforge.ingest.dicom.rescale import modality_units, rescale_unit_slope_int16
from radforge.ingest.dicom.tags import MAX_INFLATED_BYTES, scan_top_level

__all__ = [
    "MAX_FRAMES",
    "MAX_INFLATED_BYTES",
    "MAX_PIXELS_PER_FRAME",
    "MAX_TOTAL_PIXELS",
    "Frames",
    "decode_file_fast",
    "decode_instance",
    "modality_units",
    "rescale_unit_slope_int16",
    "scan_top_level",
    "supported_transfer_syntaxes",
]
