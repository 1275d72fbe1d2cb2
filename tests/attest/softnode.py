"""A node in software for the service tests: a real ECDSA P-256 AK signing real TPMS_ATTEST
quotes, an RSA EK, and the two DI pieces the service takes from other modules while they are
written elsewhere: a small appraiser (AK signature and nonce, IPE events, the accepted release
by PCR 11) and a credential challenge the software EK can answer (RSA-OAEP to the EK, bound to
the AK's name, as TPM2_MakeCredential binds it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ultraviolet.attest.model import Appraisal, Finding, FindingId, Severity
from ultraviolet.errors import UltravioletError
from ultraviolet.formats.evidence import Evidence, IpeEvent
from ultraviolet.formats.reference import Reference, parse_reference
from ultraviolet.formats.tpm import (
    AK_ATTRIBUTES,
    ALG_ECC,
    ALG_ECDSA,
    ALG_NULL,
    ALG_RSA,
    ST_ATTEST_QUOTE,
    Attest,
    ClockInfo,
    EccParameters,
    PcrSelection,
    PublicArea,
    QuoteInfo,
    RsaParameters,
    Scheme,
    Signature,
    SymmetricDefinition,
    hash_id,
    parse_signature,
    verify_quote,
)

EK_ATTRIBUTES = (
    0x000300B2  # fixedtpm|fixedparent|sensitivedataorigin|adminwithpolicy|restricted|decrypt
)
SHA256 = hash_id("sha256")
OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _ak_public(key: ec.EllipticCurvePrivateKey) -> PublicArea:
    numbers = key.public_key().public_numbers()
    parameters = EccParameters(
        SymmetricDefinition(), Scheme(ALG_ECDSA, SHA256), 0x0003, Scheme(ALG_NULL),
        numbers.x.to_bytes(32), numbers.y.to_bytes(32),
    )  # fmt: skip
    return PublicArea(ALG_ECC, SHA256, AK_ATTRIBUTES, b"", parameters)


def _ek_public(key: rsa.RSAPrivateKey) -> PublicArea:
    modulus = key.public_key().public_numbers().n.to_bytes(256)
    aes128cfb = SymmetricDefinition(0x0006, 128, 0x0043)
    parameters = RsaParameters(aes128cfb, Scheme(ALG_NULL), 2048, 0, modulus)
    return PublicArea(ALG_RSA, SHA256, EK_ATTRIBUTES, b"\0" * 32, parameters)


@dataclass
class SoftNode:
    node_id: str
    ak_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    ek_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    pcr11: bytes = b"\x11" * 32

    @property
    def ak(self) -> PublicArea:
        return _ak_public(self.ak_key)

    @property
    def ek(self) -> PublicArea:
        return _ek_public(self.ek_key)

    def activate(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        """What TPM2_ActivateCredential does for the test challenge."""
        if credential_blob != self.ak.name():
            raise ValueError("the credential is bound to another key")
        return self.ek_key.decrypt(encrypted_secret, OAEP)

    def evidence(
        self, nonce: bytes, *, ipe_events: Sequence[IpeEvent] = (), signer: SoftNode | None = None
    ) -> Evidence:
        signer = signer or self
        info = QuoteInfo((PcrSelection("sha256", (11,)),), hashlib.sha256(self.pcr11).digest())
        attest = Attest(
            ST_ATTEST_QUOTE, signer.ak.name(), nonce, ClockInfo(1000, 1, 0, True), 0x20240101,
            info.to_bytes(),
        )  # fmt: skip
        message = attest.to_bytes()
        r, s = decode_dss_signature(signer.ak_key.sign(message, ec.ECDSA(hashes.SHA256())))
        signature = Signature(ALG_ECDSA, SHA256, r=r.to_bytes(32), s=s.to_bytes(32))
        return Evidence(
            quote=message,
            signature=signature.to_bytes(),
            pcrs={"sha256": {11: self.pcr11}},
            firmware_log=b"",
            userspace_log=b"",
            ipe_events=tuple(ipe_events),
        )


def soft_challenge(ek: PublicArea, ak_name: bytes, secret: bytes) -> tuple[bytes, bytes]:
    key = ek.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    return ak_name, key.encrypt(secret, OAEP)


def soft_load_accepted(documents: Sequence[bytes], pcrs: Sequence[int]) -> list[Reference]:
    return [parse_reference(document) for document in documents]


def soft_appraiser(evidence: Evidence, *, ak: PublicArea, nonce: bytes, accepted: Any) -> Appraisal:
    findings = []
    try:
        verify_quote(evidence.quote, parse_signature(evidence.signature), ak, nonce=nonce)
        findings.append(Finding(FindingId.QUOTE_SIGNATURE, Severity.PASS, "signed by the AK"))
    except UltravioletError as exc:
        findings.append(Finding(FindingId.QUOTE_SIGNATURE, Severity.FAIL, str(exc)))
    pcr11 = evidence.pcrs.get("sha256", {}).get(11, b"")
    release = next(
        (
            f"{r.name} {r.version}"
            for r in accepted
            if any(pcr11 in phases.values() for phases in r.pcr11.values())
        ),
        None,
    )
    severity = Severity.PASS if release else Severity.FAIL
    findings.append(Finding(FindingId.PCR11_REFERENCE, severity, f"PCR 11 {pcr11.hex()}"))
    ipe = Severity.FAIL if evidence.ipe_events else Severity.PASS
    findings.append(Finding(FindingId.IPE_DENIALS, ipe, f"{len(evidence.ipe_events)} denials"))
    return Appraisal(tuple(findings), release)


def reference_document(name: str, version: str, pcr11: bytes) -> bytes:
    from ultraviolet.formats.reference import render_reference

    reference = Reference(
        name=name, version=version, usr_root_hash=b"\1" * 32,
        certificates={"pk": b"\5" * 32, "kek": b"\6" * 32, "db": b"\2" * 32},
        uki_file=f"{name}_{version}.efi", uki_authenticode_sha256=b"\3" * 32,
        uki_cmdline="quiet", ipe_policy_sha256=None, node_policy_sha256=b"\4" * 32,
        pcr11={"main": {"enter-initrd:leave-initrd:sysinit:ready": pcr11}},
        boot_loader_file="systemd-bootx64.efi", boot_loader_authenticode_sha256=b"\7" * 32,
    )  # fmt: skip
    return render_reference(reference).encode()
