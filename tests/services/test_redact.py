"""security.redact and friends: credentials and query strings never reach a message."""

from __future__ import annotations

import pytest

from radforge.services.app.security import (
    UriError,
    check_uri,
    credentials_in_address,
    has_control_characters,
    redact,
)

SECRET = "s3cr3t-value"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"s3://key:{SECRET}@bucket/x", "s3://***@bucket/x"),
        (f"s3://bucket/x?X-Amz-Signature={SECRET}", "s3://bucket/x?***"),
        (f"at http://ray:{SECRET}@head:8265/?token={SECRET} (x)", "at http://***@head:8265/?*** (x)"),
        (f"ray:{SECRET}@head:6379", "***@head:6379"),
        (f"uri: 'gs://b/run.yaml#{SECRET}' is outside", "uri: 'gs://b/run.yaml?***' is outside"),
        ("s3://bucket/prefix/", "s3://bucket/prefix/"),
        ("/data/archive?x", "/data/archive?x"),  # a local name may hold '?': only URIs lose a query
        ("host 127.0.0.1:8265", "host 127.0.0.1:8265"),
    ],
)
def test_redact(text: str, shown: str) -> None:
    assert redact(text) == shown
    assert SECRET not in redact(text)


@pytest.mark.parametrize(
    ("address", "has_password"),
    [
        (f"http://ray:{SECRET}@head:8265", True),
        (f"ray:{SECRET}@head:6379", True),
        ("http://ray@head:8265", False),
        ("head:6379", False),
        ("http://head:8265/path@x", False),
    ],
)
def test_credentials_in_address(address: str, has_password: bool) -> None:
    assert credentials_in_address(address) is has_password


@pytest.mark.parametrize("char", ["\x00", "\n", "\r", "\t", "\x1b", "\x7f", "\x85"])
def test_control_characters_are_refused_in_uris(char: str) -> None:
    assert has_control_characters(f"/data/a{char}b")
    with pytest.raises(UriError, match="control characters"):
        check_uri(f"/data/a{char}b")


def test_ordinary_uris_pass() -> None:
    assert check_uri("s3://bucket/prefix/ü ñ") == "s3://bucket/prefix/ü ñ"
    assert not has_control_characters("s3://bucket/prefix/ü ñ")
