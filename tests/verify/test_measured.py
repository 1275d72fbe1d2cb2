"""Steps 5-6 of the chain check on synthetic UKIs: the IPE policy in the initrd against the node
policy, and PCR 11 / digests against reference values."""

from __future__ import annotations

import dataclasses

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from ultraviolet.build.initrd import initrd_extension
from ultraviolet.build.keys import generate_signing_key
from ultraviolet.formats.ipe import render_ipe, sign_ipe
from ultraviolet.formats.pcr import predicted_pcr11
from ultraviolet.formats.reference import Reference
from ultraviolet.formats.uki import Uki, build_uki, parse_uki
from ultraviolet.policy import parse_policy
from ultraviolet.policy.ipe import build_ipe_policy
from ultraviolet.policy.model import NodePolicy
from ultraviolet.verify.measured import (
    check_ipe,
    check_reference_policy,
    check_reference_uki,
    check_reference_usr,
)
from ultraviolet.verify.report import CheckResult

from ..formats.pe_samples import minimal_pe

STUB = minimal_pe([(".text", b"\xc3" * 64), (".sbat", b"sbat,1\n".ljust(300, b"\0"))])
KEYS = generate_signing_key("measured tests")
OTHER = generate_signing_key("someone else")
POLICY = parse_policy(
    '[image]\nname = "host"\nversion = "2.1.0"\n[integrity]\nipe_mode = "enforce"\n'
)


def _uki(policy: NodePolicy, signed: bytes | None, compressed_prefix: bytes = b"") -> Uki:
    initrd = compressed_prefix + initrd_extension(policy, signed)
    parts = [(".osrel", b"ID=x\n"), (".cmdline", b"usrhash=ab"), (".linux", b"K" * 512)]
    return parse_uki(build_uki(STUB, [*parts, (".initrd", initrd)]))


def _signed(policy: NodePolicy, keys: object = KEYS) -> bytes:
    ipe = build_ipe_policy(policy)
    assert ipe is not None
    return sign_ipe(render_ipe(ipe), keys.key, keys.certificate)  # type: ignore[attr-defined]


def _by_id(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.check_id: r for r in results}


def test_matching_policy_passes_even_behind_compressed_data() -> None:
    uki = _uki(POLICY, _signed(POLICY), compressed_prefix=b"\x28\xb5\x2f\xfd070701" + bytes(99))
    results = _by_id(list(check_ipe(uki, "u.efi", [KEYS.certificate], POLICY)))
    assert [str(r.status) for r in results.values()] == ["pass", "pass", "pass"]
    assert "host 2.1.0" in results["ipe.policy"].message


def test_without_node_policy_the_comparison_is_skipped_not_passed() -> None:
    results = _by_id(list(check_ipe(_uki(POLICY, _signed(POLICY)), "u", [KEYS.certificate], None)))
    assert str(results["ipe.signature"].status) == "pass"
    assert str(results["ipe.policy"].status) == "skip"


def test_untrusted_signer_fails() -> None:
    uki = _uki(POLICY, _signed(POLICY, OTHER))
    results = _by_id(list(check_ipe(uki, "u", [KEYS.certificate], POLICY)))
    assert results["ipe.signature"].failed
    assert str(results["ipe.policy"].status) == "pass"  # the text itself is still compared


def test_signed_attributes_are_refused_like_the_kernel_does() -> None:
    ipe = build_ipe_policy(POLICY)
    assert ipe is not None
    with_attributes = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(render_ipe(ipe).encode())
        .add_signer(KEYS.certificate, KEYS.key, hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )
    results = _by_id(
        list(check_ipe(_uki(POLICY, with_attributes), "u", [KEYS.certificate], POLICY))
    )
    assert results["ipe.signature"].failed
    assert "signed attributes" in results["ipe.signature"].message


def test_policy_other_than_the_node_policy_names_the_difference() -> None:
    looser = parse_policy(
        '[image]\nname = "host"\nversion = "2.1.0"\n[integrity]\nipe_mode = "enforce"\n'
        'pinned_root_hashes = ["' + "ab" * 32 + '"]\n'
    )
    uki = _uki(looser, _signed(looser))
    result = _by_id(list(check_ipe(uki, "u", [KEYS.certificate], POLICY)))["ipe.policy"]
    assert result.failed
    assert "rules the node policy does not allow" in result.message
    assert "dmverity_roothash=sha256:" + "ab" * 32 in result.message


def test_mode_other_than_the_node_policy_fails() -> None:
    audit = parse_policy(
        '[image]\nname = "host"\nversion = "2.1.0"\n[integrity]\nipe_mode = "audit"\n'
    )
    uki = _uki(audit, _signed(audit))
    result = _by_id(list(check_ipe(uki, "u", [KEYS.certificate], POLICY)))["ipe.policy"]
    assert result.failed and "mode is audit, the node policy says enforce" in result.message


def test_missing_policy_fails_only_when_the_node_policy_wants_one() -> None:
    off = parse_policy('[image]\nname = "host"\nversion = "2"\n[integrity]\nipe_mode = "off"\n')
    uki = _uki(off, None)
    assert _by_id(list(check_ipe(uki, "u", [KEYS.certificate], POLICY)))["ipe.present"].failed
    assert str(next(iter(check_ipe(uki, "u", [KEYS.certificate], off))).status) == "pass"
    assert str(next(iter(check_ipe(uki, "u", [KEYS.certificate], None))).status) == "skip"


def _reference(uki: Uki, digest: bytes) -> Reference:
    return Reference(
        name="host",
        version="2.1.0",
        usr_root_hash=b"\x11" * 32,
        certificates={"db": b"\x22" * 32},
        uki_file="host_2.1.0.efi",
        uki_authenticode_sha256=digest,
        uki_cmdline=uki.cmdline or "",
        ipe_policy_sha256=None,
        node_policy_sha256=bytes.fromhex(POLICY.digest),
        pcr11=predicted_pcr11(uki),
    )


def test_reference_pcr11_and_digest() -> None:
    uki = _uki(POLICY, _signed(POLICY))
    reference = _reference(uki, b"\x33" * 32)
    results = _by_id(list(check_reference_uki(uki, b"\x33" * 32, "u", reference)))
    assert not results["reference.uki"].failed and not results["pcr11.reference"].failed
    other = _uki(POLICY, None)  # another initrd: other PCR 11 values
    results = _by_id(list(check_reference_uki(other, b"\x44" * 32, "u", reference)))
    assert results["reference.uki"].failed
    assert results["pcr11.reference"].failed
    assert "main/enter-initrd: predicted" in results["pcr11.reference"].message
    extra = dataclasses.replace(reference, pcr11={**reference.pcr11, "debug": {}})
    message = _by_id(list(check_reference_uki(uki, b"\x33" * 32, "u", extra)))
    assert "reference.json has profile debug" in message["pcr11.reference"].message


def test_reference_usr_and_policy() -> None:
    reference = _reference(_uki(POLICY, None), b"\x33" * 32)
    assert not check_reference_usr([b"\x00" * 32, b"\x11" * 32], reference).failed
    assert check_reference_usr([b"\x00" * 32], reference).failed
    assert not check_reference_policy(POLICY, reference).failed
    other = parse_policy('[image]\nname = "host"\nversion = "2.1.1"\n')
    assert check_reference_policy(other, reference).failed
