"""Which TPMs may enrol and how their AK is bound to their EK.

A node sends its EK public area (and the EK certificate if the TPM has one) and the public area
of an attestation key it created. The verifier accepts the EK by policy (`EkAcceptance`:
an administrator-approved EK fingerprint, the default; or an EK certificate chaining to a
trusted manufacturer CA, attest/ekcert.py; or either), checks that the AK is a restricted
signing key that cannot leave the TPM, and challenges the node with TPM2_MakeCredential: only
the TPM that holds the EK can recover the secret, and only for an object with the AK's name
(TPM2_ActivateCredential). So the secret coming back proves EK and AK live in the same TPM.

EK fingerprint: SHA-256 of the EK public key as DER SubjectPublicKeyInfo, in hex; the same value
comes from the EK certificate or from `tpm2_readpublic -f der` of the EK.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization
from sqlalchemy.orm import Session

from ultraviolet.attest.ekcert import EkCertificateAuthorities
from ultraviolet.attest.errors import BadRequest, Forbidden, Unavailable
from ultraviolet.attest.store import ApprovedEk
from ultraviolet.errors import AttestationError, UltravioletError
from ultraviolet.formats.tpm import OBJECT_ATTRIBUTES, PublicArea, parse_public_2b

# (ek_public, ak_name, secret) -> (TPM2B_ID_OBJECT credential blob, TPM2B_ENCRYPTED_SECRET)
ChallengeMaker = Callable[[PublicArea, bytes, bytes], tuple[bytes, bytes]]

_BIT = {name: 1 << bit for bit, name in OBJECT_ATTRIBUTES.items()}


def ek_fingerprint(ek: PublicArea) -> str:
    der = ek.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _has(public: PublicArea, *names: str) -> bool:
    return all(public.attributes & _BIT[name] for name in names)


def parse_key(data: bytes, what: str) -> PublicArea:
    try:
        public = parse_public_2b(data)
        public.public_key()
        return public
    except UltravioletError as exc:
        raise BadRequest(f"enrol.{what}", f"{what} is not a usable TPM2B_PUBLIC: {exc}") from None


def check_ak(data: bytes) -> PublicArea:
    """An AK must be a restricted signing key fixed to its TPM (so the TPM signs only quotes
    and other TPM-generated structures with it, and it cannot be exported)."""
    ak = parse_key(data, "ak_public")
    if not _has(ak, "fixedtpm", "fixedparent", "sensitivedataorigin", "restricted", "sign"):
        raise BadRequest(
            "enrol.ak-attributes",
            "the AK must be fixedtpm|fixedparent|sensitivedataorigin|restricted|sign, has "
            + "|".join(ak.attribute_names),
        )
    if _has(ak, "decrypt"):
        raise BadRequest("enrol.ak-attributes", "the AK must not be a decryption key")
    return ak


class EkAcceptance(enum.Enum):
    """How an EK earns enrolment."""

    APPROVED = "approved"  # its fingerprint is on the allow-list (POST /v1/admin/eks)
    CERTIFICATE = "certificate"  # its certificate chains to a configured manufacturer CA
    EITHER = "either"  # approved, or else a certificate that chains


class EkPolicy:
    """Decides whether an EK may enrol: by the approved list, by its certificate, or either.
    Without `authorities` only the approved list can admit an EK (the certificate is kept with
    the enrolment but not checked)."""

    def __init__(
        self,
        acceptance: EkAcceptance = EkAcceptance.APPROVED,
        authorities: EkCertificateAuthorities | None = None,
    ) -> None:
        if acceptance is not EkAcceptance.APPROVED and authorities is None:
            raise AttestationError(f"EK acceptance {acceptance.value!r} needs EK CA certificates")
        self.acceptance = acceptance
        self.authorities = authorities

    def parse_ek(self, data: bytes) -> PublicArea:
        ek = parse_key(data, "ek_public")
        if not _has(ek, "fixedtpm", "restricted", "decrypt"):
            raise BadRequest("enrol.ek-attributes", "the EK must be a restricted decryption key")
        return ek

    def check(
        self, session: Session, fingerprint: str, certificate: bytes | None, now: dt.datetime
    ) -> None:
        """Return if the EK may enrol (a certificate is checked at `now`); if not Forbidden
        (`enrol.ek-not-approved`) or EkCertificateRefused (`enrol.ek-certificate`, a reason)."""
        if self.acceptance is not EkAcceptance.CERTIFICATE:
            if session.get(ApprovedEk, fingerprint) is not None:
                return
            if self.acceptance is EkAcceptance.APPROVED or not certificate:
                lacking = "" if certificate else " and the node sent no EK certificate"
                raise Forbidden(
                    "enrol.ek-not-approved",
                    f"EK {fingerprint} is not approved (POST /v1/admin/eks){lacking}",
                )
        assert self.authorities is not None  # __init__: only APPROVED goes without
        self.authorities.check(certificate, fingerprint, now)

    def challenge(
        self, make: ChallengeMaker | None, ek: PublicArea, ak_name: bytes, secret: bytes
    ) -> tuple[bytes, bytes]:
        if make is None:
            raise Unavailable(
                "enrol.no-credential", "this verifier cannot make credential challenges"
            )
        try:
            return make(ek, ak_name, secret)
        except UltravioletError as exc:
            raise BadRequest("enrol.ek-public", f"cannot challenge this EK: {exc}") from None
