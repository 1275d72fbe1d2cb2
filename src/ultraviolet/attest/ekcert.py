"""EK certificates checked against trusted TPM-manufacturer CA certificates.

A TPM vendor certifies each TPM's endorsement key with an X.509 certificate (TCG EK Credential
Profile) in the TPM's NV (RSA 2048: index 0x01c00002), issued by the vendor's intermediate CA
under its root. The verifier is configured with roots and intermediates (`uvctl attest serve
--ek-ca`). An EK certificate admits its EK when:

- it parses, and its public key is the EK the node presented (the same SubjectPublicKeyInfo
  fingerprint: a genuine certificate of another TPM proves nothing about this EK);
- it is valid now (notBefore <= now <= notAfter);
- cryptography's path builder finds a chain from it through the configured intermediates to a
  configured root, checking every signature, every validity period and the CA certificates'
  web-PKI profile (basicConstraints CA, keyCertSign, path lengths, name chaining).

cryptography's client verifier would refuse EK certificates as end-entity certificates: they
carry the extended key usage tcg-kp-EKCertificate (2.23.133.8.1), not clientAuth, and often an
empty subject with a critical subjectAltName of TPM attributes (manufacturer, model, version).
So the end-entity policy here is our own: any extension may be present (a TPM profile has
several web PKI does not know), but the certificate must not be a CA and, if it names extended
key usages, tcg-kp-EKCertificate must be one of them.

Roots are the self-signed configured certificates; the others are intermediates and must be CA
certificates chaining to a configured root (checked when they are loaded): trusting an
intermediate alone would keep trusting it after its root is gone from the configuration.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification
from cryptography.x509.oid import ObjectIdentifier

from ultraviolet.attest.errors import Forbidden
from ultraviolet.errors import AttestationError
from ultraviolet.formats.certificates import parse_certificate_file

TCG_KP_EK_CERTIFICATE = ObjectIdentifier("2.23.133.8.1")
MAX_CHAIN_DEPTH = 6


class EkCertificateRefused(Forbidden):
    """The EK certificate does not admit the EK. `reason` is stable: missing, format,
    key-mismatch, expired, not-yet-valid, untrusted (no chain to a configured root)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__("enrol.ek-certificate", f"{reason}: {message}")


def spki_fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the certificate's SubjectPublicKeyInfo (DER), hex: attest/enrolment's EK
    fingerprint of the same key."""
    der = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _self_signed(certificate: x509.Certificate) -> bool:
    if certificate.issuer != certificate.subject:
        return False
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _not_a_ca(
    policy: verification.Policy, certificate: x509.Certificate, value: x509.BasicConstraints | None
) -> None:
    if value is not None and value.ca:
        raise ValueError("an EK certificate must not be a CA certificate")


def _ek_usage(
    policy: verification.Policy,
    certificate: x509.Certificate,
    value: x509.ExtendedKeyUsage | None,
) -> None:
    if value is not None and TCG_KP_EK_CERTIFICATE not in value:
        raise ValueError("its extended key usage lacks tcg-kp-EKCertificate (2.23.133.8.1)")


def _ek_extension_policy() -> verification.ExtensionPolicy:
    anything = verification.Criticality.AGNOSTIC
    return (
        verification.ExtensionPolicy.permit_all()
        .may_be_present(x509.BasicConstraints, anything, _not_a_ca)
        .may_be_present(x509.ExtendedKeyUsage, anything, _ek_usage)
    )


@dataclass(frozen=True)
class EkCertificateAuthorities:
    """The configured roots (trust anchors) and intermediates."""

    roots: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...]

    @classmethod
    def of(
        cls, certificates: Sequence[x509.Certificate], now: dt.datetime
    ) -> EkCertificateAuthorities:
        """Sort into roots and intermediates; AttestationError if there is no root or an
        intermediate does not chain to one (now) as a CA."""
        roots = tuple(c for c in certificates if _self_signed(c))
        intermediates = tuple(c for c in certificates if not _self_signed(c))
        if not roots:
            raise AttestationError(
                "no self-signed root among the EK CA certificates: give the manufacturers' "
                "roots along with their intermediates"
            )
        authorities = cls(roots, intermediates)
        for intermediate in intermediates:
            try:
                # Checked as a CA itself: a certificate that cannot issue would break every
                # chain through it later, silently.
                ca = verification.ExtensionPolicy.webpki_defaults_ca()
                authorities._builder(now).extension_policies(
                    ca_policy=ca, ee_policy=ca
                ).build_client_verifier().verify(intermediate, list(intermediates))
            except verification.VerificationError as exc:
                raise AttestationError(
                    f"EK CA certificate {intermediate.subject.rfc4514_string()!r} is not a CA "
                    f"chaining to a configured root: {exc}"
                ) from None
        return authorities

    def _builder(self, now: dt.datetime) -> verification.PolicyBuilder:
        return (
            verification.PolicyBuilder()
            .store(verification.Store(list(self.roots)))
            .time(now)
            .max_chain_depth(MAX_CHAIN_DEPTH)
        )

    def check(self, der: bytes | None, ek_fingerprint: str, now: dt.datetime) -> None:
        """Return if the certificate admits the EK with this fingerprint; else
        EkCertificateRefused saying why."""
        if not der:
            raise EkCertificateRefused("missing", "the node sent no EK certificate")
        try:
            certificate = x509.load_der_x509_certificate(der)
            certified = spki_fingerprint(certificate)
        except (ValueError, TypeError) as exc:  # also unsupported key types
            raise EkCertificateRefused("format", f"not a usable DER certificate: {exc}") from None
        if certified != ek_fingerprint:
            raise EkCertificateRefused(
                "key-mismatch",
                f"the certificate is for the key {certified}, the EK presented is {ek_fingerprint}",
            )
        if now > certificate.not_valid_after_utc:
            raise EkCertificateRefused(
                "expired", f"the certificate expired at {certificate.not_valid_after_utc}"
            )
        if now < certificate.not_valid_before_utc:
            raise EkCertificateRefused(
                "not-yet-valid", f"the certificate is valid from {certificate.not_valid_before_utc}"
            )
        verifier = (
            self._builder(now)
            .extension_policies(
                ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=_ek_extension_policy(),
            )
            .build_client_verifier()
        )
        try:
            verifier.verify(certificate, list(self.intermediates))
        except verification.VerificationError as exc:
            issuer = certificate.issuer.rfc4514_string() or "(empty)"
            raise EkCertificateRefused(
                "untrusted", f"no valid chain from issuer {issuer!r} to a configured root: {exc}"
            ) from None


def load_ca_certificates(path: Path) -> list[x509.Certificate]:
    """The certificates of a PEM file (one or more) or a DER file; AttestationError naming
    the file otherwise."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AttestationError(f"EK CA certificate {path}: {exc.strerror}") from None
    try:
        return parse_certificate_file(data)
    except ValueError as exc:
        raise AttestationError(
            f"EK CA certificate {path}: neither PEM certificates nor a DER certificate ({exc})"
        ) from None
