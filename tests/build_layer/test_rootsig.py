"""Reassembling a UKI with the root-hash signature option."""

from __future__ import annotations

import pytest

from ultraviolet.build.rootsig import OPTION, PROFILE_OPTIONS, reassemble_uki, with_option
from ultraviolet.errors import BuildError
from ultraviolet.formats.pcr import predict_pcr11
from ultraviolet.formats.uki import build_uki, parse_uki

from ..formats.pe_samples import minimal_pe

STUB = minimal_pe([(".text", b"\xc3" * 64), (".sbat", b"sbat,1\n".ljust(300, b"\0"))])


def test_option_is_added_once() -> None:
    line = with_option("usrhash=ab console=ttyS0 systemd.verity_usr_options=old", OPTION + "X")
    assert line == f"usrhash=ab console=ttyS0 {OPTION}X"


def test_too_long_command_line() -> None:
    with pytest.raises(BuildError, match="exceeds 2048"):
        with_option("x" * 1500, OPTION + "y" * 600)


def test_reassembled_uki_keeps_every_section() -> None:
    parts = [
        (".sbat", b"sbat,1\nuki,1\n"),
        (".osrel", b"ID=x\n"),
        (".cmdline", b"usrhash=ab"),
        (".linux", b"K" * 3000),
        (".initrd", b"I" * 2000),
    ]
    original = build_uki(STUB, parts)
    rebuilt = parse_uki(reassemble_uki(original, STUB, OPTION + "SIG"))
    assert rebuilt.cmdline == f"usrhash=ab {OPTION}SIG"
    assert [(s.name, s.data) for s in rebuilt.sections if s.name != ".cmdline"] == [
        (name, data) for name, data in parts if name != ".cmdline"
    ]


def test_profiles_are_appended() -> None:
    original = build_uki(STUB, [(".cmdline", b"usrhash=ab"), (".linux", b"K" * 100)])
    profiles = [PROFILE_OPTIONS["factory-reset"]]
    rebuilt = parse_uki(reassemble_uki(original, STUB, OPTION + "S", profiles))
    assert [p.id for p in rebuilt.profiles] == ["main", "main", "factory-reset"]
    assert rebuilt.profiles[2].cmdline == f"usrhash=ab {OPTION}S systemd.factory_reset=1"
    assert rebuilt.profiles[0].cmdline == rebuilt.cmdline
    # The twin of main (what systemd-boot 257 starts on a trial boot) measures the same.
    twin, main = (rebuilt.profiles[n].sections for n in (1, 0))
    assert {k: s.data for k, s in twin.items()} == {k: s.data for k, s in main.items()}
    assert predict_pcr11(rebuilt, profile=1) == predict_pcr11(rebuilt, profile=0)
    assert predict_pcr11(rebuilt, profile=2) != predict_pcr11(rebuilt, profile=0)
    with pytest.raises(BuildError, match="already has profiles"):
        reassemble_uki(reassemble_uki(original, STUB, "x", profiles), STUB, "y")
