"""The one DICOM tag walker: top-level elements of a standard file, without building a pydicom Dataset.

Header discovery (a few dozen attributes of every object) and pixel decoding (the pixel module and
the Pixel Data value) both walk the same bytes the same way: file meta (group 0002, always explicit
VR little endian), then the data set in the transfer syntax's encoding. Sequences of undefined
length are skipped item by item; anything irregular raises :class:`GeneralPath`, which hands the
object to pydicom's parser (the "general path"): the walker never guesses.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from radforge.ingest.errors import IngestError, Reason

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
# Deflated Explicit VR Little Endian is rare for images; past this a deflate bomb is refused
MAX_INFLATED_BYTES: int = 256 << 20

PIXEL_DATA = 0x7FE00010
TRANSFER_SYNTAX = 0x00020010
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_SHORT_VRS = frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN", b"SH"}
    | {b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
)
# per byte order: tag, US, UL, tag + 4-byte length (implicit VR, items), tag + VR + 2-byte length
STRUCTS = {
    little: tuple(struct.Struct(e + f) for f in ("HH", "H", "I", "HHI", "HH2sH"))
    for little, e in ((True, "<"), (False, ">"))
}


class GeneralPath(Exception):
    """The walker hands the object to pydicom's parser (not an error by itself)."""

    def __init__(self, detail: str, *, truncated: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.truncated = truncated


@dataclass(frozen=True)
class TopLevel:
    """What one walk of a standard file found.

    ``found`` maps each wanted top-level tag to its raw value bytes (empty for an undefined-length
    sequence: only its presence is known). ``pixel`` is ``(offset in body, length, VR)`` of the Pixel
    Data element, None when the walk ended without it. ``body`` is the data set's bytes (inflated
    when the transfer syntax is deflated), the buffer ``pixel`` points into.
    """

    transfer_syntax: str
    little: bool
    body: bytes
    found: dict[int, bytes]
    pixel: tuple[int, int, str] | None


def walk_top_level(data: bytes, wanted: frozenset[int], *, inflate_limit: int | None = None) -> TopLevel:
    """Walk the top-level data set of a standard DICOM file (preamble, ``DICM``, file meta).

    A deflated data set is inflated up to ``inflate_limit`` bytes (beyond it: ``IngestError``
    ABSURD_DIMENSIONS, a deflate bomb); with no limit, a deflated object goes to the general path.
    Raises :class:`GeneralPath` for anything the walker does not handle.
    """
    if len(data) < 132 or data[128:132] != b"DICM":
        raise GeneralPath("no preamble and DICM prefix")
    meta: dict[int, bytes] = {}
    pos = walk_meta(data, 132, meta)
    raw_uid = meta.get(TRANSFER_SYNTAX)
    if raw_uid is None:
        raise GeneralPath("no Transfer Syntax UID (0002,0010) in the file meta")
    uid = raw_uid.decode("ascii", "replace").strip(" \x00")
    body, little = data, uid != EXPLICIT_VR_BE
    if uid == DEFLATED_EXPLICIT_VR_LE:
        if inflate_limit is None:
            raise GeneralPath("deflated data set")
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            body, pos = inflater.decompress(data[pos:], inflate_limit), 0
        except zlib.error:
            raise GeneralPath("deflated data set does not inflate") from None
        if inflater.unconsumed_tail:
            raise IngestError(
                Reason.ABSURD_DIMENSIONS, f"deflated data set inflates beyond {inflate_limit} bytes"
            )
    found: dict[int, bytes] = {}
    try:
        pixel = walk(
            body, pos, len(body), implicit=uid == IMPLICIT_VR_LE, little=little, found=found, wanted=wanted
        )
    except (struct.error, IndexError):
        raise GeneralPath("data set ends inside an element header", truncated=True) from None
    return TopLevel(uid, little, body, found, pixel)


def scan_top_level(data: bytes, wanted: frozenset[int]) -> TopLevel | None:
    """Raw values of the ``wanted`` top-level tags, or None when the object needs pydicom's parser.

    None for no preamble, a deflated data set, an irregular or cut-off header. The walk stops at
    Pixel Data, so the first bytes of an object suffice.
    """
    try:
        return walk_top_level(data, wanted)
    except GeneralPath:
        return None


def walk_meta(data: bytes, pos: int, found: dict[int, bytes]) -> int:
    """Read the group 0002 file meta elements (always explicit VR little endian); return where it ends."""
    tag_s, u16, u32, _, _ = STRUCTS[True]
    try:
        while pos + 8 <= len(data):
            group, elem = tag_s.unpack_from(data, pos)
            if group != 0x0002:
                return pos
            vr = data[pos + 4 : pos + 6]
            if vr in _LONG_VRS:
                length, pos = u32.unpack_from(data, pos + 8)[0], pos + 12
            elif vr in _SHORT_VRS:
                length, pos = u16.unpack_from(data, pos + 6)[0], pos + 8
            else:
                raise GeneralPath("file meta element with an unknown VR")
            if length == UNDEFINED or pos + length > len(data):
                raise GeneralPath("file meta element runs past the end", truncated=True)
            found[(group << 16) | elem] = data[pos : pos + length]
            pos += length
    except struct.error:
        raise GeneralPath("file meta ends inside an element header", truncated=True) from None
    raise GeneralPath("file meta is not followed by a data set", truncated=True)


def walk(
    data: bytes,
    pos: int,
    end: int,
    *,
    implicit: bool,
    little: bool,
    found: dict[int, bytes],
    wanted: frozenset[int],
    nested: bool = False,
) -> tuple[int, int, str] | None:
    """Walk data elements from ``pos``; record wanted top-level values in ``found``.

    At the top level returns ``(value offset, length, VR)`` of Pixel Data, or None when the data
    set ends without it. Nested (an item of undefined length) it returns ``(offset after the item
    delimiter, 0, "")``. Undefined-length sequences are walked item by item; anything irregular
    raises ``GeneralPath`` so pydicom's parser gets the file.
    """
    _, _, u32, implicit_s, explicit_s = STRUCTS[little]
    while pos < end:  # one unpack per element: this loop is most of the fast path's header time
        if implicit:
            group, elem, length = implicit_s.unpack_from(data, pos)
            vr = b""
        else:
            group, elem, vr, length = explicit_s.unpack_from(data, pos)
        tag = (group << 16) | elem
        if group == 0xFFFE:  # item / delimiters: tag + 4-byte length, no VR in any encoding
            if nested and tag == ITEM_END:
                return pos + 8, 0, ""
            raise GeneralPath("unexpected item or delimiter tag in a data set")
        if implicit or vr in _SHORT_VRS:
            pos += 8
        elif vr in _LONG_VRS:
            length, pos = u32.unpack_from(data, pos + 8)[0], pos + 12
        else:
            raise GeneralPath("element with an unknown VR")
        if tag == PIXEL_DATA and not nested:
            return pos, length, vr.decode("ascii")
        if length == UNDEFINED:
            # sequence items of an undefined-length UN are implicit VR little endian (PS3.5 6.2.2)
            pos = _skip_items(data, pos, end, implicit=implicit or vr == b"UN", little=little or vr == b"UN")
            if not nested and tag in wanted:
                found[tag] = b""  # only the presence of a sequence matters here
            continue
        if pos + length > end:
            raise GeneralPath("element value runs past the end", truncated=True)
        if not nested and tag in wanted:
            found[tag] = data[pos : pos + length]
        pos += length
    if nested:
        raise GeneralPath("item runs past the end", truncated=True)
    return None


def _skip_items(data: bytes, pos: int, end: int, *, implicit: bool, little: bool) -> int:
    """Skip the items of an undefined-length value; return the offset after its sequence delimiter."""
    implicit_s = STRUCTS[little][3]
    while pos + 8 <= end:
        group, elem, length = implicit_s.unpack_from(data, pos)
        tag, pos = (group << 16) | elem, pos + 8
        if tag == SEQUENCE_END:
            return pos
        if tag != ITEM:
            raise GeneralPath("sequence holds something other than items")
        if length == UNDEFINED:
            after = walk(
                data, pos, end, implicit=implicit, little=little, found={}, wanted=frozenset(), nested=True
            )
            assert after is not None  # nested walks return or raise
            pos = after[0]
        else:
            pos += length
    raise GeneralPath("sequence runs past the end", truncated=True)


def encapsulated_end(data: bytes, start: int) -> int:
    """Offset where encapsulated Pixel Data items end (its sequence delimiter), checking for truncation."""
    item_s = STRUCTS[True][3]
    pos = start
    while pos + 8 <= len(data):
        group, elem, length = item_s.unpack_from(data, pos)
        tag = (group << 16) | elem
        if tag == SEQUENCE_END:
            return pos
        if tag != ITEM or length == UNDEFINED:
            raise IngestError(Reason.DECODE_FAILED, "encapsulated Pixel Data (7FE0,0010) holds a non-item")
        pos += 8 + length
        if pos > len(data):
            raise IngestError(Reason.DECODE_FAILED, "encapsulated Pixel Data (7FE0,0010) truncated")
    raise IngestError(Reason.DECODE_FAILED, "encapsulated Pixel Data (7FE0,0010) truncated (no delimiter)")
