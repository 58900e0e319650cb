"""De-identification helpers: salted keys and allow-listed attribute sanitising."""

from __future__ import annotations

import pytest

from radforge.ingest import deid


def test_salted_key_depends_on_salt_and_parts() -> None:
    a = deid.salted_key(b"salt-one", "1.2.3", "4.5.6")
    assert a == deid.salted_key(b"salt-one", "1.2.3", "4.5.6")
    assert a != deid.salted_key(b"salt-two", "1.2.3", "4.5.6")
    assert a != deid.salted_key(b"salt-one", "1.2.34", ".5.6")  # separator prevents ambiguity
    assert len(a) == 24 and all(c in "0123456789abcdef" for c in a)


@pytest.mark.parametrize(
    ("value", "bucket"),
    [
        ("045Y", "40-49"),
        ("009Y", "0-9"),
        ("018M", "0-9"),
        ("090Y", "90+"),
        ("104Y", "90+"),
        ("", None),
        ("abc", None),
        (None, None),
        ("003W", "0-9"),
    ],
)
def test_age_bucket(value: object, bucket: str | None) -> None:
    assert deid.age_bucket(value) == bucket


def test_body_part_drops_free_text_and_normalises_terms() -> None:
    assert deid.body_part("chest") == "CHEST"
    assert deid.body_part("Head-Neck") == "HEADNECK"
    assert deid.body_part("Patient John Doe was scanned here") is None
    assert deid.body_part(None) is None


def test_manufacturer_and_sex() -> None:
    assert deid.manufacturer("SIEMENS") == "SIEMENS"
    assert deid.manufacturer("x" * 100) == "x" * 40
    assert deid.sex("f") == "F" and deid.sex("unknown") is None
    assert deid.positive_float("120") == 120.0 and deid.positive_float("-1") is None
