"""UKIs against ukify (build/inspect) and Authenticode against sbsign/sbverify."""

from __future__ import annotations

import hashlib
import json
import random
import struct
from pathlib import Path

import pytest

from ultraviolet.build.keys import KeyPair, generate_signing_key
from ultraviolet.formats.authenticode import (
    authenticode_digest,
    embedded_signatures,
    indirect_data_digest,
    verify_authenticode,
)
from ultraviolet.formats.pe import add_sections, parse_pe
from ultraviolet.formats.pkcs7 import parse_signed_data
from ultraviolet.formats.uki import build_uki, parse_uki
from ultraviolet.tools import ToolsChroot

pytestmark = pytest.mark.oracle

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
ADDON_STUB = Path("/usr/lib/systemd/boot/efi/addonx64.efi.stub")


@pytest.fixture
def ukify_uki(tools_chroot: ToolsChroot, tmp_path: Path) -> Path:
    rng = random.Random(3)
    (tmp_path / "linux").write_bytes(rng.randbytes(100_000))
    (tmp_path / "initrd").write_bytes(rng.randbytes(50_001))
    (tmp_path / "osrel").write_text('ID=uvtest\nIMAGE_VERSION=1.2.3\nPRETTY_NAME="UV test"\n')
    output = tmp_path / "ukify.efi"
    tools_chroot.run(
        [
            "ukify",
            "build",
            "--linux",
            str(tmp_path / "linux"),
            "--initrd",
            str(tmp_path / "initrd"),
            "--cmdline",
            "usrhash=" + "ab" * 32 + " console=ttyS0",
            "--os-release",
            f"@{tmp_path / 'osrel'}",
            "--uname",
            "6.12.0-uvtest",
            "--output",
            str(output),
        ],
        binds=[tmp_path],
    )
    return output


def _inspect(tools: ToolsChroot, image: Path) -> dict:  # type: ignore[type-arg]
    result = tools.run(["ukify", "--json=short", "inspect", str(image)], binds=[image.parent])
    return json.loads(result.text)  # type: ignore[no-any-return]


def _stub(tools: ToolsChroot, path: Path = STUB) -> bytes:
    return (tools.root / path.relative_to("/")).read_bytes()


def _ukify_build(tools: ToolsChroot, directory: Path, *args: str) -> None:
    tools.run(["ukify", "build", *args], binds=[directory])


def test_multi_profile_uki(tools_chroot: ToolsChroot, tmp_path: Path) -> None:
    rng = random.Random(5)
    (tmp_path / "linux").write_bytes(rng.randbytes(20_000))
    profile_pe = tmp_path / "reset.efi"
    reset_cmdline = "usrhash=" + "cd" * 32 + " systemd.factory_reset=1"
    _ukify_build(
        tools_chroot,
        tmp_path,
        *("--profile", "ID=factory-reset\nTITLE=Factory reset"),
        *("--cmdline", reset_cmdline, "--output", str(profile_pe)),
    )
    joined = tmp_path / "multi.efi"
    _ukify_build(
        tools_chroot,
        tmp_path,
        *("--linux", str(tmp_path / "linux"), "--uname", "6.12.0", "--os-release", "ID=uvtest"),
        *("--cmdline", "usrhash=" + "ab" * 32, "--join-profile", str(profile_pe)),
        *("--output", str(joined)),
    )
    theirs = joined.read_bytes()
    uki = parse_uki(theirs)
    # ukify adds the base's own ".profile" (ID=main) last in the base, then the joined profile.
    assert [(p.number, p.id) for p in uki.profiles] == [(0, "main"), (1, "factory-reset")]
    assert uki.usrhash == "ab" * 32 and uki.profiles[0].cmdline == uki.cmdline
    assert uki.profiles[1].cmdline == reset_cmdline
    assert uki.profiles[1].sections[".linux"] == uki.base[".linux"]
    # inspect reports one entry per name, the last of that name in the file.
    report = _inspect(tools_chroot, joined)
    last = {s.name: s for s in uki.sections}
    assert set(last) == set(report)
    for name, section in last.items():
        assert (section.size, hashlib_sha256(section.data)) == (
            report[name]["size"],
            report[name]["sha256"],
        )
    parts = [(s.name, s.data) for s in uki.sections]
    assert build_uki(_stub(tools_chroot), parts) == theirs
    # The profile PE itself is the addon stub plus .profile and .cmdline.
    profile_parts = [(s.name, s.data) for s in uki.sections[-2:]]
    ours = add_sections(_stub(tools_chroot, ADDON_STUB), profile_parts)
    assert ours == profile_pe.read_bytes()


@pytest.mark.parametrize("string_table_size", [11, 9])
def test_stub_with_symbol_table(
    tools_chroot: ToolsChroot, tmp_path: Path, string_table_size: int
) -> None:
    """ukify drops a COFF symbol table that ends the file (the string table's size counts its
    own 4 bytes: 11 here), and keeps one that does not (9 leaves 2 bytes over); so do we."""
    stub = bytearray(_stub(tools_chroot))
    pe = parse_pe(stub)
    assert pe.pointer_to_symbol_table == 0
    struct.pack_into("<II", stub, pe.coff_offset + 8, len(stub), 2)
    stub += bytes(2 * 18) + struct.pack("<I", string_table_size) + b"strings"
    (tmp_path / "stub.efi").write_bytes(stub)
    (tmp_path / "linux").write_bytes(b"not a kernel" * 100)
    output = tmp_path / "uki.efi"
    _ukify_build(
        tools_chroot,
        tmp_path,
        *("--stub", str(tmp_path / "stub.efi"), "--linux", str(tmp_path / "linux")),
        *("--uname", "6.12.0", "--output", str(output)),
    )
    theirs = output.read_bytes()
    assert parse_pe(theirs).number_of_symbols == (0 if string_table_size == 11 else 2)
    parts = [(s.name, s.data) for s in parse_uki(theirs).sections]
    assert build_uki(bytes(stub), parts) == theirs


def test_parse_matches_ukify_inspect(tools_chroot: ToolsChroot, ukify_uki: Path) -> None:
    report = _inspect(tools_chroot, ukify_uki)
    uki = parse_uki(ukify_uki.read_bytes())
    assert [s.name for s in uki.sections] == list(report)
    for section in uki.sections:
        assert section.size == report[section.name]["size"]
        assert hashlib_sha256(section.data) == report[section.name]["sha256"]
        if "text" in report[section.name]:
            assert section.text() == report[section.name]["text"]
    assert uki.usrhash == "ab" * 32
    assert uki.uname == "6.12.0-uvtest"
    assert uki.os_release["IMAGE_VERSION"] == "1.2.3"


def test_our_uki_is_byte_identical_to_ukify(tools_chroot: ToolsChroot, ukify_uki: Path) -> None:
    theirs = ukify_uki.read_bytes()
    parts = [(s.name, s.data) for s in parse_uki(theirs).sections]
    ours = build_uki(_stub(tools_chroot), parts)
    assert ours == theirs
    path = ukify_uki.with_name("ours.efi")
    path.write_bytes(ours)
    assert _inspect(tools_chroot, path) == _inspect(tools_chroot, ukify_uki)


def _sbsign(tools: ToolsChroot, image: Path, keys: tuple[KeyPair, Path, Path]) -> Path:
    _, key_path, cert_path = keys
    signed = image.with_suffix(".signed.efi")
    tools.run(
        [
            "sbsign",
            "--key",
            str(key_path),
            "--cert",
            str(cert_path),
            "--output",
            str(signed),
            str(image),
        ],
        binds=[image.parent, key_path.parent],
    )
    return signed


def test_sbsign_signature_verifies(
    tools_chroot: ToolsChroot, ukify_uki: Path, signing_keys: tuple[KeyPair, Path, Path]
) -> None:
    keys, _, cert_path = signing_keys
    signed = _sbsign(tools_chroot, ukify_uki, signing_keys)
    image = signed.read_bytes()
    check = verify_authenticode(image, [keys.certificate])
    assert check.ok, check.reason
    (blob,) = embedded_signatures(image)
    content = parse_signed_data(blob).content_element
    assert content is not None
    algorithm, digest = indirect_data_digest(content)
    assert (algorithm, digest) == ("sha256", authenticode_digest(image))
    # The signature does not change the digest: it equals the unsigned image's.
    assert authenticode_digest(ukify_uki.read_bytes()) == digest
    tools_chroot.run(
        ["sbverify", "--cert", str(cert_path), str(signed)], binds=[signed.parent, cert_path.parent]
    )
    assert not verify_authenticode(image, [generate_signing_key("other").certificate]).ok


@pytest.mark.parametrize("where", ["section", "header"])
def test_flipped_byte_fails_in_both(
    tools_chroot: ToolsChroot,
    ukify_uki: Path,
    signing_keys: tuple[KeyPair, Path, Path],
    where: str,
) -> None:
    keys, _, cert_path = signing_keys
    signed = _sbsign(tools_chroot, ukify_uki, signing_keys)
    image = bytearray(signed.read_bytes())
    uki = parse_uki(bytes(image))
    cmdline = uki.section(".cmdline")
    assert cmdline is not None
    # A byte of the .cmdline data, or SizeOfCode in the optional header: both are hashed.
    offset = (
        cmdline.offset + 3 if where == "section" else parse_pe(bytes(image)).optional_offset + 4
    )
    image[offset] ^= 0x01
    signed.write_bytes(image)
    check = verify_authenticode(bytes(image), [keys.certificate])
    assert not check.ok
    theirs = tools_chroot.run(
        ["sbverify", "--cert", str(cert_path), str(signed)],
        binds=[signed.parent, cert_path.parent],
        check=False,
    )
    assert theirs.returncode != 0


def test_unsigned_is_refused(ukify_uki: Path, signing_keys: tuple[KeyPair, Path, Path]) -> None:
    check = verify_authenticode(ukify_uki.read_bytes(), [signing_keys[0].certificate])
    assert not check.ok and "not signed" in check.reason


def hashlib_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
