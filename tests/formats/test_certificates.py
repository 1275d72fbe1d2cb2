"""Certificate files: PEM (one or more certificates) or one DER certificate."""

from __future__ import annotations

import contextlib

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from ultraviolet.build.keys import generate_signing_key
from ultraviolet.formats.certificates import PEM_MARKER, parse_certificate_file

FIRST = generate_signing_key("first", key_size=1024).certificate
SECOND = generate_signing_key("second", key_size=1024).certificate
PEM = serialization.Encoding.PEM


def test_pem_file_with_two_certificates() -> None:
    data = b"a comment line\n" + FIRST.public_bytes(PEM) + SECOND.public_bytes(PEM)
    assert parse_certificate_file(data) == [FIRST, SECOND]


def test_der_file() -> None:
    der = FIRST.public_bytes(serialization.Encoding.DER)
    assert parse_certificate_file(der) == [FIRST]


@pytest.mark.parametrize("data", [b"", b"not a certificate", PEM_MARKER + b"\nbroken\n"])
def test_neither_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_certificate_file(data)


@given(st.binary(max_size=256), st.booleans())
def test_random_bytes_give_certificates_or_a_value_error(data: bytes, pem: bool) -> None:
    with contextlib.suppress(ValueError):  # anything else (IndexError, ...) fails the test
        parse_certificate_file(PEM_MARKER + data if pem else data)
