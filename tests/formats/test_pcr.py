"""PCR arithmetic and PCR 11 prediction from UKI sections."""

from __future__ import annotations

import hashlib

import pytest

from ultraviolet.formats.pcr import PcrError, extend, phase_paths, predict_pcr11, replay
from ultraviolet.formats.uki import build_uki, parse_uki

from .pe_samples import minimal_pe


def test_extend_and_replay() -> None:
    digest = hashlib.sha256(b"x").digest()
    assert extend(bytes(32), digest) == hashlib.sha256(bytes(32) + digest).digest()
    assert replay([digest, digest]) == extend(extend(bytes(32), digest), digest)
    with pytest.raises(PcrError, match="32 bytes"):
        extend(bytes(32), b"short")


def test_phase_paths() -> None:
    assert phase_paths()[-1] == "enter-initrd:leave-initrd:sysinit:ready"


def test_prediction_by_hand() -> None:
    stub = minimal_pe([(".text", b"\xc3" * 64)])
    uki = parse_uki(
        build_uki(stub, [(".cmdline", b"quiet"), (".linux", b"K" * 100), (".pcrsig", b"{}")])
    )
    h = hashlib.sha256
    expected = bytes(32)
    # canonical order: .linux before .cmdline regardless of file order; .pcrsig not measured
    for name, data in ((b".linux", b"K" * 100), (b".cmdline", b"quiet")):
        expected = extend(expected, h(name + b"\0").digest())
        expected = extend(expected, h(data).digest())
    expected = extend(expected, h(b"enter-initrd").digest())
    assert predict_pcr11(uki)["enter-initrd"] == expected
    # FORMATS.md: sha256("enter-initrd")
    assert h(b"enter-initrd").hexdigest().startswith("51e6b92f405d1f98")


def test_profiles_and_errors() -> None:
    stub = minimal_pe([(".text", b"\xc3" * 64)])
    uki = parse_uki(
        build_uki(
            stub,
            [(".linux", b"K"), (".cmdline", b"a"), (".profile", b"ID=reset"), (".cmdline", b"b")],
        )
    )
    assert predict_pcr11(uki, profile=0) != predict_pcr11(uki)
    with pytest.raises(PcrError, match="no profile 1"):
        predict_pcr11(uki, profile=1)
    assert len(predict_pcr11(uki, bank="sha1")["enter-initrd"]) == 20
