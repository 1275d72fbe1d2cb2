"""PE/COFF, UKI and Authenticode on hand-made images; mutations -> only format errors."""

from __future__ import annotations

import contextlib
import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ultraviolet.formats.authenticode import (
    AuthenticodeError,
    authenticode_digest,
    verify_authenticode,
)
from ultraviolet.formats.pe import PeError, parse_pe, section_data
from ultraviolet.formats.uki import UkiError, build_uki, cmdline_value, parse_uki

from .pe_samples import minimal_pe

STUB = minimal_pe([(".text", b"\xc3" * 700), (".sbat", b"sbat,1\n".ljust(400, b"\0"))])
PARTS = [
    (".osrel", b'ID=uv\nIMAGE_VERSION=1.2\nPRETTY_NAME="Ultra Violet"\n'),
    (".cmdline", b"usrhash=ab12 console=ttyS0 usrhash=cd34"),
    (".uname", b"6.12.0"),
    (".linux", b"kernel" * 500),
    (".initrd", b"initrd" * 300),
]


def test_parse_minimal_pe() -> None:
    pe = parse_pe(STUB)
    assert pe.is_pe32_plus and pe.machine == 0x8664
    assert [s.name for s in pe.sections] == [".text", ".sbat"]
    assert section_data(STUB, pe.sections[0]) == b"\xc3" * 700
    assert pe.certificate_table is not None and pe.certificate_table.size == 0


def test_build_and_parse_uki() -> None:
    image = build_uki(STUB, PARTS)
    uki = parse_uki(image)
    names = [s.name for s in uki.sections]
    assert names == [".sbat", ".osrel", ".cmdline", ".uname", ".linux", ".initrd"]
    assert uki.section(".linux").data == b"kernel" * 500  # type: ignore[union-attr]
    assert uki.usrhash == "cd34"  # the last one wins, as for the kernel
    assert uki.os_release["PRETTY_NAME"] == "Ultra Violet"
    assert uki.uname == "6.12.0"
    pe = parse_pe(image)
    assert pe.size_of_image == pe.sections[-1].virtual_address + 0x1000
    assert pe.checksum == 0


def test_sbat_replaced_in_place() -> None:
    image = build_uki(STUB, [(".sbat", b"sbat,1\nuki,1\n"), *PARTS])
    pe = parse_pe(image)
    assert [s.name for s in pe.sections].count(".sbat") == 1
    assert section_data(image, pe.section(".sbat")) == b"sbat,1\nuki,1\n"  # type: ignore[arg-type]


def test_multi_profile() -> None:
    image = build_uki(
        STUB,
        [
            *PARTS,
            (".profile", b"ID=factory-reset\n"),
            (".cmdline", b"usrhash=cd34 systemd.factory_reset=1"),
        ],
    )
    uki = parse_uki(image)
    assert uki.cmdline == "usrhash=ab12 console=ttyS0 usrhash=cd34"
    (profile,) = uki.profiles
    assert profile.id == "factory-reset"
    assert profile.cmdline == "usrhash=cd34 systemd.factory_reset=1"
    assert profile.sections[".linux"].data == b"kernel" * 500  # inherited from the base


def test_uki_errors() -> None:
    with pytest.raises(UkiError, match=r"no \.linux"):
        parse_uki(STUB)
    with pytest.raises(UkiError, match="not a UKI section"):
        build_uki(STUB, [(".text2", b"x")])
    with pytest.raises(UkiError, match="header space"):
        build_uki(minimal_pe([(".text", b"x")], header_room=0), PARTS)
    with pytest.raises(UkiError, match=r"duplicate \.cmdline"):
        parse_uki(build_uki(STUB, [*PARTS, (".cmdline", b"again")]))


def test_cmdline_value() -> None:
    assert cmdline_value("a=1 usrhash=x b usrhash=y", "usrhash") == "y"
    assert cmdline_value("usrhash", "usrhash") is None


def test_authenticode_digest_by_hand() -> None:
    image = build_uki(STUB, PARTS)
    pe = parse_pe(image)
    security = pe.certificate_table
    assert security is not None
    expected = hashlib.sha256()
    expected.update(image[: pe.checksum_offset])
    expected.update(image[pe.checksum_offset + 4 : security.entry_offset])
    expected.update(image[security.entry_offset + 8 : pe.size_of_headers])
    for section in sorted(pe.sections, key=lambda s: s.pointer_to_raw_data):
        start = section.pointer_to_raw_data
        expected.update(image[start : start + section.size_of_raw_data])
    assert authenticode_digest(image) == expected.digest()
    # The checksum field is not covered: changing it keeps the digest.
    patched = bytearray(image)
    struct.pack_into("<I", patched, pe.checksum_offset, 0x1234)
    assert authenticode_digest(bytes(patched)) == expected.digest()


def test_unsigned_image_is_not_ok() -> None:
    check = verify_authenticode(build_uki(STUB, PARTS), [])
    assert not check.ok and check.reason == "the image is not signed"


SAMPLE = build_uki(STUB, PARTS)


@settings(max_examples=400)
@given(st.lists(st.tuples(st.integers(0, 0x400), st.integers(0, 255)), min_size=1, max_size=6))
def test_mutated_headers(mutations: list[tuple[int, int]]) -> None:
    data = bytearray(SAMPLE)
    for offset, value in mutations:
        data[offset] = value
    with contextlib.suppress(UkiError):
        parse_uki(bytes(data))
    with contextlib.suppress(AuthenticodeError):
        verify_authenticode(bytes(data), [])
    with contextlib.suppress(PeError):
        parse_pe(bytes(data))


@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    with contextlib.suppress(UkiError):
        parse_uki(data)
    with contextlib.suppress(AuthenticodeError):
        authenticode_digest(data)
