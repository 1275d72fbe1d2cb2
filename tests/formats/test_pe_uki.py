"""PE/COFF, UKI and Authenticode on hand-made images; mutations -> only format errors."""

from __future__ import annotations

import contextlib
import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ultraviolet.formats.authenticode import (
    WIN_CERT_REVISION_2,
    WIN_CERT_TYPE_PKCS_SIGNED_DATA,
    AuthenticodeError,
    authenticode_digest,
    embedded_signatures,
    verify_authenticode,
)
from ultraviolet.formats.pe import PeError, PeSection, add_sections, parse_pe, section_data
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


def test_parse_pe32() -> None:
    image = minimal_pe([(".text", b"\xc3" * 10)], plus=False)
    pe = parse_pe(image)
    assert not pe.is_pe32_plus
    assert len(pe.data_directories) == 16
    # PE32 has a 4-byte ImageBase and no BaseOfData..., so its directories start 16 bytes earlier.
    assert pe.data_directories[0].entry_offset == pe.optional_offset + 96
    assert parse_pe(STUB).data_directories[0].entry_offset == parse_pe(STUB).optional_offset + 112


@pytest.mark.parametrize(
    ("virtual_size", "raw_size", "expected"),
    [
        (5, 0x200, b"abcde"),  # VirtualSize < SizeOfRawData: the file padding is cut
        (0x200, 0x200, b"abcdefgh".ljust(0x200, b"\0")),
        (0x300, 0x200, b"abcdefgh".ljust(0x300, b"\0")),  # uninitialized tail reads as zeros
        (0x10, 0, bytes(0x10)),  # no raw data at all (.bss-like)
    ],
)
def test_section_data_is_virtual_size(virtual_size: int, raw_size: int, expected: bytes) -> None:
    image = bytes(0x200) + b"abcdefgh".ljust(0x200, b"\0")
    section = PeSection(".data", virtual_size, 0x1000, raw_size, 0x200, 0, 0)
    assert section_data(image, section) == expected


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


def test_device_matched_sections_may_repeat() -> None:
    image = build_uki(
        STUB,
        [
            *PARTS,
            (".dtbauto", b"dtb-a"),
            (".dtbauto", b"dtb-b"),
            (".profile", b"ID=other\n"),
            (".dtbauto", b"dtb-c"),
        ],
    )
    uki = parse_uki(image)
    assert [s.data for s in uki.base_device_matched] == [b"dtb-a", b"dtb-b"]
    assert ".dtbauto" not in uki.base
    (profile,) = uki.profiles
    # The profile's own candidate is tried first; the stub takes the first that matches.
    assert [s.data for s in profile.device_matched] == [b"dtb-c", b"dtb-a", b"dtb-b"]


def test_symbol_table_at_end_is_stripped() -> None:
    symbols = bytes(18 * 3) + struct.pack("<I", 12) + b"longname\0\0\0\0"[:8]
    stub = bytearray(STUB + symbols)
    pe = parse_pe(stub)
    struct.pack_into("<II", stub, pe.coff_offset + 8, len(STUB), 3)
    image = add_sections(bytes(stub), [(".linux", b"k")])
    stripped = parse_pe(image)
    assert (stripped.pointer_to_symbol_table, stripped.number_of_symbols) == (0, 0)
    assert stripped.characteristics == pe.characteristics | 0x0008
    # Otherwise the same UKI as from the stub that never had symbols.
    expected = bytearray(add_sections(STUB, [(".linux", b"k")]))
    struct.pack_into("<H", expected, pe.coff_offset + 18, pe.characteristics | 0x0008)
    assert image == bytes(expected)
    assert section_data(image, stripped.sections[-1]) == b"k"
    assert stripped.sections[-1].pointer_to_raw_data == len(STUB)


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


def with_certificate_table(image: bytes, entries: list[tuple[int, int, bytes]]) -> bytes:
    """`image` + a certificate table of WIN_CERTIFICATE(revision, type, bCertificate) entries."""
    table = b""
    for revision, kind, blob in entries:
        entry = struct.pack("<IHH", 8 + len(blob), revision, kind) + blob
        table += entry.ljust(-(-len(entry) // 8) * 8, b"\0")
    patched = bytearray(image)
    security = parse_pe(image).certificate_table
    assert security is not None
    struct.pack_into("<II", patched, security.entry_offset, len(image), len(table))
    return bytes(patched) + table


SEQUENCE = b"\x30\x03\x02\x01\x05"  # a tiny DER element standing in for PKCS#7


def test_win_certificate_entries() -> None:
    image = build_uki(STUB, PARTS)
    signed = with_certificate_table(
        image,
        [
            (WIN_CERT_REVISION_2, WIN_CERT_TYPE_PKCS_SIGNED_DATA, SEQUENCE),
            (WIN_CERT_REVISION_2, 0x0001, b"x509 entry, not PKCS#7"),  # skipped
            (WIN_CERT_REVISION_2, WIN_CERT_TYPE_PKCS_SIGNED_DATA, SEQUENCE + b"\0\0"),
        ],
    )
    assert embedded_signatures(signed) == (SEQUENCE, SEQUENCE)
    # The table is outside the digest, and so is its directory entry.
    assert authenticode_digest(signed) == authenticode_digest(image)
    check = verify_authenticode(signed, [])
    assert not check.ok and "PKCS#7" in check.reason


def test_win_certificate_errors() -> None:
    image = build_uki(STUB, PARTS)
    bad_padding = with_certificate_table(
        image, [(WIN_CERT_REVISION_2, WIN_CERT_TYPE_PKCS_SIGNED_DATA, SEQUENCE + b"\1")]
    )
    with pytest.raises(AuthenticodeError, match="non-zero bytes") as info:
        embedded_signatures(bad_padding)
    assert info.value.offset == len(image) + 8 + len(SEQUENCE)
    too_long = bytearray(
        with_certificate_table(
            image, [(WIN_CERT_REVISION_2, WIN_CERT_TYPE_PKCS_SIGNED_DATA, SEQUENCE)]
        )
    )
    struct.pack_into("<I", too_long, len(image), 0x100)
    with pytest.raises(AuthenticodeError, match="out of bounds"):
        embedded_signatures(bytes(too_long))
    truncated = with_certificate_table(image, [(WIN_CERT_REVISION_2, 2, SEQUENCE)])[:-8]
    with pytest.raises(AuthenticodeError):
        embedded_signatures(truncated)


SAMPLE = build_uki(STUB, PARTS)
SIGNED_SAMPLE = with_certificate_table(
    SAMPLE, [(WIN_CERT_REVISION_2, WIN_CERT_TYPE_PKCS_SIGNED_DATA, SEQUENCE)]
)


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


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, 15), st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_certificate_table(mutations: list[tuple[int, int]]) -> None:
    data = bytearray(SIGNED_SAMPLE)
    assert len(data) == len(SAMPLE) + 16
    for offset, value in mutations:
        data[len(SAMPLE) + offset] = value
    with contextlib.suppress(AuthenticodeError):
        verify_authenticode(bytes(data), [])


@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    with contextlib.suppress(UkiError):
        parse_uki(data)
    with contextlib.suppress(AuthenticodeError):
        authenticode_digest(data)
