"""X.509 certificate files as operators hand them over: PEM text holding one or more
certificates, or a single DER certificate."""

from __future__ import annotations

from cryptography import x509

PEM_MARKER = b"-----BEGIN CERTIFICATE-----"


def parse_certificate_file(data: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM or DER certificate file's bytes; ValueError (cryptography's,
    saying what it could not read) when they are neither."""
    if PEM_MARKER in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]
