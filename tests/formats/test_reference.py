"""reference.json: round trip, and every malformed document is a ReferenceError naming the key."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ultraviolet.formats.reference import (
    Reference,
    ReferenceError,
    parse_reference,
    render_reference,
)

SAMPLE = Reference(
    name="host",
    version="1.2.3",
    usr_root_hash=bytes(range(32)),
    certificates={
        "pk": b"\x08" * 32,
        "kek": b"\x09" * 32,
        "db": b"\x01" * 32,
        "update": b"\x02" * 32,
    },
    uki_file="host_1.2.3.efi",
    uki_authenticode_sha256=b"\x03" * 32,
    uki_cmdline="usrhash=00 rw",
    ipe_policy_sha256=None,
    node_policy_sha256=b"\x04" * 32,
    pcr11={"main": {"enter-initrd": b"\x05" * 32}, "factory-reset": {"enter-initrd": b"\x06" * 32}},
    boot_loader_file="EFI/BOOT/BOOTX64.EFI",
    boot_loader_authenticode_sha256=b"\x0a" * 32,
)
FORMAT_1 = replace(
    SAMPLE,
    certificates={"db": b"\x01" * 32},
    boot_loader_file=None,
    boot_loader_authenticode_sha256=None,
)


def test_round_trip() -> None:
    text = render_reference(SAMPLE)
    assert json.loads(text)["format"] == 2
    assert parse_reference(text.encode()) == SAMPLE
    with_ipe = SAMPLE.__class__(**{**SAMPLE.__dict__, "ipe_policy_sha256": b"\x07" * 32})
    assert parse_reference(render_reference(with_ipe).encode()) == with_ipe


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("usr_root_hash"), "missing key 'usr_root_hash'"),
        (lambda d: d.update(usr_root_hash="AB" * 32), r"usr_root_hash: expected 64 lowercase"),
        (lambda d: d.update(extra=1), "unknown key"),
        (lambda d: d["uki"].update(file=3), r"uki.file: expected str, got int"),
        (lambda d: d.update(pcr11={}), "no profile"),
        (lambda d: d["pcr11"]["main"].update(x="abc"), r"pcr11.main.x: expected 40 or 64"),
        (lambda d: d.update(format=3), "format must be 1 or 2"),
        (lambda d: d.pop("boot_loader"), "missing key 'boot_loader'"),
        (lambda d: d["boot_loader"].update(authenticode_sha256="00"), "boot_loader.authentic"),
        (lambda d: d["boot_loader"].update(x=1), r"boot_loader: unknown key\(s\): x"),
        (lambda d: d["certificates"].pop("kek"), r"certificates: missing key\(s\): kek"),
        (lambda d: d.update(image=[]), "expected an object"),
    ],
)
def test_malformed(mutate: object, message: str) -> None:
    document = json.loads(render_reference(SAMPLE))
    mutate(document)  # type: ignore[operator]
    with pytest.raises(ReferenceError, match=message):
        parse_reference(json.dumps(document).encode())


def test_format_1_still_parses_without_boot_loader_and_pk_kek() -> None:
    """Releases built before format 2 keep working with `uvctl verify`; the attestation
    verifier refuses them (tests/attest)."""
    text = render_reference(FORMAT_1)
    assert json.loads(text)["format"] == 1 and "boot_loader" not in json.loads(text)
    assert parse_reference(text.encode()) == FORMAT_1
    document = json.loads(text)
    document["boot_loader"] = json.loads(render_reference(SAMPLE))["boot_loader"]
    with pytest.raises(ReferenceError, match=r"unknown key\(s\): boot_loader"):
        parse_reference(json.dumps(document).encode())


def test_not_json_names_the_offset() -> None:
    with pytest.raises(ReferenceError) as caught:
        parse_reference(b'{"format": 1,, }')
    assert caught.value.offset == 13


@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    with contextlib.suppress(ReferenceError):
        parse_reference(data)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=12,
    )
)
def test_random_json(value: object) -> None:
    with contextlib.suppress(ReferenceError):
        parse_reference(json.dumps(value).encode())
