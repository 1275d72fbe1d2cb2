"""Simulated nodes for the verifier tests, through the real code path: attest/simulate.py's
software TPM (a real AK signing real TPMS_ATTEST quotes over PCRs extended from a real
firmware event log and systemd measurement log of a synthetic release), an RSA EK whose private
key answers the verifier's real TPM2_MakeCredential (formats/tpmcredential.activate_credential),
and the verifier with its own defaults, as `uvctl attest serve` runs it
(attest/appraise.appraise and attest/references.load_accepted). No swtpm: the AK is just a key,
the quote is the same bytes a TPM would sign."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ultraviolet.attest.simulate import (
    Boot,
    SecureBootKeys,
    SimulatedRelease,
    SoftwareTpm,
    boot_measurements,
    simulated_evidence,
    synthetic_release,
)
from ultraviolet.formats.evidence import Evidence, IpeEvent
from ultraviolet.formats.reference import render_reference
from ultraviolet.formats.tpm import (
    ALG_NULL,
    ALG_RSA,
    PublicArea,
    RsaParameters,
    Scheme,
    SymmetricDefinition,
    hash_id,
)
from ultraviolet.formats.tpmcredential import activate_credential

# fixedtpm|fixedparent|sensitivedataorigin|adminwithpolicy|restricted|decrypt: the TCG EK
# template's attributes (RSA 2048, AES-128-CFB, the endorsement policy's 32-byte digest).
EK_ATTRIBUTES = 0x000300B2


def ek_public(key: rsa.RSAPrivateKey) -> PublicArea:
    modulus = key.public_key().public_numbers().n.to_bytes(256, "big")
    aes128cfb = SymmetricDefinition(0x0006, 128, 0x0043)
    parameters = RsaParameters(aes128cfb, Scheme(ALG_NULL), 2048, 0, modulus)
    return PublicArea(ALG_RSA, hash_id("sha256"), EK_ATTRIBUTES, b"\0" * 32, parameters)


def software_tpm(ak: str = "rsa") -> SoftwareTpm:
    """RSA-2048 (tpm2_createak's default) or ECC P-256 AK; P-256 keys are made much faster."""
    if ak == "ecc":
        return SoftwareTpm(ec.generate_private_key(ec.SECP256R1()))
    return SoftwareTpm()


@dataclass
class SimulatedNode:
    node_id: str
    ak_algorithm: str = "rsa"
    tpm: SoftwareTpm = field(init=False)
    ek_key: rsa.RSAPrivateKey = field(
        init=False,
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )

    def __post_init__(self) -> None:
        self.tpm = software_tpm(self.ak_algorithm)

    @property
    def ek(self) -> PublicArea:
        return ek_public(self.ek_key)

    @property
    def ak(self) -> PublicArea:
        return self.tpm.public

    def activate(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        """TPM2_ActivateCredential of the verifier's challenge for this node's AK."""
        return activate_credential(
            self.ek_key, self.ek, self.ak.name(), credential_blob, encrypted_secret
        )

    def evidence(
        self,
        nonce: bytes,
        boot: Boot,
        *,
        ipe_events: Iterable[IpeEvent] = (),
        signer: SoftwareTpm | None = None,
    ) -> Evidence:
        """The evidence of booting `boot`, quoted by this node's AK (or `signer`'s)."""
        return simulated_evidence(signer or self.tpm, boot, nonce, ipe_events=ipe_events)


@dataclass(frozen=True)
class Releases:
    """Synthetic releases of one product (one set of Secure Boot keys) and their boots."""

    keys: SecureBootKeys = field(default_factory=SecureBootKeys.generate)

    def release(self, name: str, version: str) -> SimulatedRelease:
        return synthetic_release(name, version, self.keys)

    def document(self, name: str, version: str) -> bytes:
        """The release's reference.json, as `PUT /v1/admin/releases/{name}/{version}` takes it."""
        return render_reference(self.release(name, version).reference).encode()

    def boot(self, name: str, version: str, *, secure_boot: bool = True) -> Boot:
        return boot_measurements(self.release(name, version), secure_boot=secure_boot)
