"""Certificate authorities and EK certificates made with pyca/cryptography for the enrolment
tests, shaped as TPM vendors issue them (TCG EK Credential Profile): an empty subject, a
critical subjectAltName of TPM manufacturer/model/version attributes, the extended key usage
tcg-kp-EKCertificate, keyEncipherment, not a CA."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID, ObjectIdentifier

TPM_MANUFACTURER = ObjectIdentifier("2.23.133.2.1")
TPM_MODEL = ObjectIdentifier("2.23.133.2.2")
TPM_VERSION = ObjectIdentifier("2.23.133.2.3")
EK_CERTIFICATE_USAGE = ObjectIdentifier("2.23.133.8.1")
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
FAR = dt.datetime(2099, 12, 31, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Authority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


def authority(
    common_name: str,
    issuer: Authority | None = None,
    *,
    not_after: dt.datetime = FAR,
) -> Authority:
    """A root (issuer None) or an intermediate CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    signer = issuer.key if issuer else key
    issuer_name = issuer.certificate.subject if issuer else _name(common_name)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(START)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
    )
    return Authority(builder.sign(signer, hashes.SHA256()), key)


def ek_certificate(
    ek_key: CertificatePublicKeyTypes,
    issuer: Authority,
    *,
    not_before: dt.datetime = START,
    not_after: dt.datetime = FAR,
    usage: ObjectIdentifier = EK_CERTIFICATE_USAGE,
    ca: bool = False,
) -> bytes:
    """DER of an EK certificate for `ek_key` issued by `issuer`."""
    tpm = x509.Name(
        [
            x509.NameAttribute(TPM_MANUFACTURER, "id:53544D20"),
            x509.NameAttribute(TPM_MODEL, "ST33HTPHAHD4"),
            x509.NameAttribute(TPM_VERSION, "id:00010102"),
        ]
    )
    usages = x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=True,
        data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer.certificate.subject)
        .public_key(ek_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DirectoryName(tpm)]), critical=True)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(usages, critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
        .sign(issuer.key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)
