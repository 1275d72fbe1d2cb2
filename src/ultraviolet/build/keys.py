"""Signing key material, generated with pyca/cryptography.

Private keys are written with mode 0600 and never copied into an image.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ultraviolet.errors import BuildError

VALIDITY = datetime.timedelta(days=3650)


@dataclass(frozen=True)
class KeyPair:
    key: rsa.RSAPrivateKey
    certificate: x509.Certificate

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def generate_signing_key(common_name: str, *, key_size: int = 2048) -> KeyPair:
    """A self-signed RSA certificate usable for Secure Boot db, verity and IPE signatures.

    RSA 2048 with SHA-256 because that is what UEFI firmware and the kernel's keyrings accept
    everywhere; code-signing EKU because the kernel's platform keyring takes such certificates.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(key, certificate)


def write_key_pair(pair: KeyPair, key_path: Path, certificate_path: Path) -> None:
    """Write the private key 0600 (created so, never widened) and the certificate 0644."""
    key_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pair.key_pem())
    os.chmod(key_path, 0o600)
    certificate_path.write_bytes(pair.certificate_pem())


def load_key_pair(key_path: Path, certificate_path: Path) -> KeyPair:
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        certificate = x509.load_pem_x509_certificate(certificate_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise BuildError(f"cannot load key pair {key_path} / {certificate_path}: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise BuildError(f"{key_path}: expected an RSA private key")
    if certificate.public_key() != key.public_key():
        raise BuildError(f"{certificate_path} does not belong to {key_path}")
    return KeyPair(key, certificate)
