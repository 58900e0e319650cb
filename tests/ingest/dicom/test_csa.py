"""radforge.ingest.dicom.csa against nibabel's CSA reader on real Siemens CSA2 headers, and its refusals."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel
import pytest

from radforge.ingest.dicom.csa import CSAFormatError, mosaic_count, parse_csa2, slice_normal
from radforge.synthetic.mosaic import build_csa2

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # nibabel warns that its DICOM readers are experimental
    from nibabel.nicom import csareader

NICOM_DATA = Path(nibabel.__file__).parent / "nicom" / "tests" / "data"


@pytest.mark.parametrize("name", ["csa2_b0.bin", "csa2_b1000.bin"])
def test_real_csa2_headers_parse_as_nibabel_reads_them(name: str) -> None:
    raw = (NICOM_DATA / name).read_bytes()
    reference = csareader.read(raw)["tags"]
    tags = parse_csa2(raw)
    assert set(tags) == set(reference)
    for key, entry in reference.items():
        want = [str(v) for v in entry["items"]]
        got = tags[key]
        assert len(got) == len(want), key
        if entry["vr"] in ("FD", "FL", "DS"):
            assert [float(v) for v in got] == pytest.approx([float(v) for v in want]), key
        else:
            assert got == want, key
    assert mosaic_count(tags) == csareader.get_n_mosaic(csareader.read(raw)) == 48
    assert slice_normal(tags) == pytest.approx(tuple(csareader.get_slice_normal(csareader.read(raw))))


def test_the_synthetic_writer_round_trips() -> None:
    tags = {"NumberOfImagesInMosaic": ["12"], "SliceNormalVector": ["0", "0.6", "0.8"], "Empty": []}
    parsed = parse_csa2(build_csa2(tags))
    assert parsed == tags
    assert mosaic_count(parsed) == 12 and slice_normal(parsed) == (0.0, 0.6, 0.8)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"", "no SV10"),
        (b"CSA1" + b"\x00" * 20, "no SV10"),  # the older CSA1 layout: not read
        (b"SV10\x04\x03\x02\x01", "shorter than its preamble"),
        (b"SV10\x04\x03\x02\x01" + (5000).to_bytes(4, "little") + b"\x00" * 4, "claims 5000 tags"),
        (build_csa2({"NumberOfImagesInMosaic": ["12"]})[:-2], "runs past the end"),
        (build_csa2({"NumberOfImagesInMosaic": ["12"]})[:110], "ends inside an item"),
        (build_csa2({"NumberOfImagesInMosaic": ["12"]})[:90], "ends inside a tag"),
    ],
)
def test_malformed_headers_are_refused_by_what_is_wrong(raw: bytes, match: str) -> None:
    with pytest.raises(CSAFormatError, match=match):
        parse_csa2(raw)


@pytest.mark.parametrize("values", [[], ["0"], ["-3"], ["many"]])
def test_no_usable_count_is_none(values: list[str]) -> None:
    assert mosaic_count({"NumberOfImagesInMosaic": values}) is None
