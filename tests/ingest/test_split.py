"""4D split decisions: image kinds, the volume cap, and which attribute separates revisited positions."""

from __future__ import annotations

import pytest

from radforge.ingest.discover import Header
from radforge.ingest.split import image_kind, keep_evenly, split_volumes


@pytest.mark.parametrize(
    ("image_type", "kind"),
    [
        (["ORIGINAL", "PRIMARY", "AXIAL"], "magnitude"),
        (["ORIGINAL", "PRIMARY", "M", "ND"], "magnitude"),
        (["ORIGINAL", "PRIMARY", "P", "ND"], "phase"),  # Siemens
        (["ORIGINAL", "PRIMARY", "PHASE MAP", "PHASE"], "phase"),
        (["ORIGINAL", "PRIMARY", "P_FFE", "P", "FFE"], "phase"),  # Philips
        (["ORIGINAL", "PRIMARY", "R_SE", "R"], "real"),
        (["ORIGINAL", "PRIMARY", "IMAGINARY"], "imaginary"),
        (["DERIVED", "PRIMARY", "REFORMATTED", "AVERAGE"], "magnitude"),
        (["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE", "ND", "MOSAIC"], "magnitude"),
        ([], "magnitude"),
    ],
)
def test_image_kind(image_type: list[str], kind: str) -> None:
    assert image_kind(image_type) == kind


def test_keep_evenly_keeps_the_first_and_spreads_the_rest() -> None:
    assert keep_evenly(300, 4) == [0, 100, 199, 299]
    assert keep_evenly(3, 4) == [0, 1, 2] and keep_evenly(5, 1) == [0] and keep_evenly(1, 4) == [0]


def _h(path: str, z: float, **attrs: object) -> Header:
    return Header(path=path, size=1, kind="dicom", ipp=[0.0, 0.0, z], **attrs)  # type: ignore[arg-type]


def test_revisited_positions_split_by_the_attribute_that_separates_them() -> None:
    dwi = [_h(f"{b}-{z}", z, b_value=b, acquisition="1") for b in ("0", "1000") for z in (0.0, 1.0)]
    assert sorted(split_volumes("d", dwi)) == ["d|b0/None", "d|b1000/None"]
    cardiac = [_h(f"{t}-{z}", z, trigger=t) for t in ("0", "400") for z in (0.0, 1.0)]
    assert sorted(split_volumes("d", cardiac)) == ["d|g0", "d|g400"]
    plain = [_h(f"{z}", z) for z in (0.0, 1.0, 2.0)]
    assert split_volumes("d", plain) == {"d": plain}  # nothing revisited: one volume
    unexplained = [_h("a", 0.0), _h("b", 0.0)]
    assert split_volumes("d", unexplained) == {"d": unexplained}  # left to duplicate_positions
