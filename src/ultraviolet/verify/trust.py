"""Loading the certificates a verification trusts (PEM bundles or DER files)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cryptography import x509

from ultraviolet.errors import VerificationError


def load_certificates(paths: Iterable[Path]) -> tuple[x509.Certificate, ...]:
    certificates: list[x509.Certificate] = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise VerificationError(f"cannot read certificate {path}: {exc.strerror}") from exc
        try:
            if b"-----BEGIN CERTIFICATE-----" in data:
                certificates.extend(x509.load_pem_x509_certificates(data))
            else:
                certificates.append(x509.load_der_x509_certificate(data))
        except ValueError as exc:
            raise VerificationError(f"{path}: not a PEM or DER X.509 certificate ({exc})") from exc
    return tuple(certificates)
