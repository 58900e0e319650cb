"""Siemens CSA headers (the private "SIEMENS CSA HEADER" block): a small pure parser of the CSA2 format.

A Siemens MOSAIC image tiles the slices of one volume into one image; how many tiles hold a slice
is stated only in the CSA Image Header Info (0029,xx10), element ``NumberOfImagesInMosaic``, and
the direction the slices were stacked in by ``SliceNormalVector``. The CSA2 layout (``SV10``):

* 16-byte preamble: ``b"SV10"``, 4 unused bytes, the tag count (uint32 little endian), 4 unused bytes;
* per tag: name (64 bytes, NUL-terminated), VM (int32), VR (4 bytes), SyngoDT (int32), item count
  (int32), 4 unused bytes;
* per item: 4 int32 of which the second is the value's length, then the value (text, NUL-padded),
  padded to a multiple of 4 bytes.

The older CSA1 layout (no ``SV10``) is not read: its mosaics fall back to the acquisition matrix.
Values are returned as text; nothing here is logged (text values could hold anything).
"""

from __future__ import annotations

import struct

CSA_CREATOR = "SIEMENS CSA HEADER"
_MAX_TAGS = 1000  # a real image header holds ~100 tags
_MAX_ITEMS = 1000
_TAG = struct.Struct("<64si4s3i")
_ITEM = struct.Struct("<4i")


class CSAFormatError(ValueError):
    """The bytes are not a readable CSA2 header (named by what is wrong, never by its content)."""


def parse_csa2(raw: bytes) -> dict[str, list[str]]:
    """Return ``tag name -> its non-empty text values`` of a CSA2 (SV10) header; raises CSAFormatError."""
    if raw[:4] != b"SV10":
        raise CSAFormatError("not a CSA2 header (no SV10 prefix)")
    if len(raw) < 16:
        raise CSAFormatError("CSA2 header shorter than its preamble")
    (n_tags,) = struct.unpack_from("<I", raw, 8)
    if not 0 < n_tags <= _MAX_TAGS:
        raise CSAFormatError(f"CSA2 header claims {n_tags} tags")
    pos, tags = 16, {}
    for _ in range(n_tags):
        if pos + _TAG.size > len(raw):
            raise CSAFormatError("CSA2 header ends inside a tag")
        name_raw, _vm, _vr, _syngo, n_items, _unused = _TAG.unpack_from(raw, pos)
        pos += _TAG.size
        if not 0 <= n_items <= _MAX_ITEMS:
            raise CSAFormatError(f"CSA2 tag claims {n_items} items")
        values = []
        for _ in range(n_items):
            if pos + _ITEM.size > len(raw):
                raise CSAFormatError("CSA2 header ends inside an item")
            length = _ITEM.unpack_from(raw, pos)[1]
            pos += _ITEM.size
            if length < 0 or pos + length > len(raw):
                raise CSAFormatError("CSA2 item runs past the end")
            text = raw[pos : pos + length].split(b"\x00", 1)[0].decode("latin-1").strip()
            if text:
                values.append(text)
            pos += (length + 3) // 4 * 4
        tags[name_raw.split(b"\x00", 1)[0].decode("latin-1")] = values
    return tags


def mosaic_count(tags: dict[str, list[str]]) -> int | None:
    """``NumberOfImagesInMosaic`` as a positive int, None when absent or not a whole number."""
    values = tags.get("NumberOfImagesInMosaic") or []
    try:
        count = int(float(values[0])) if values else 0
    except ValueError:
        return None
    return count if count > 0 else None


def slice_normal(tags: dict[str, list[str]]) -> tuple[float, float, float] | None:
    """``SliceNormalVector`` (the direction the mosaic's slices step along), None when absent."""
    values = tags.get("SliceNormalVector") or []
    try:
        normal = tuple(float(v) for v in values)
    except ValueError:
        return None
    return (normal[0], normal[1], normal[2]) if len(normal) == 3 else None

