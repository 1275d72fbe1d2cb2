"""Loading what a verification trusts (certificates: PEM bundles or DER files) and expects
(a release's reference.json)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cryptography import x509

from ultraviolet.errors import VerificationError
from ultraviolet.formats.certificates import parse_certificate_file
from ultraviolet.formats.reference import Reference, ReferenceError, parse_reference


def load_certificates(paths: Iterable[Path]) -> tuple[x509.Certificate, ...]:
    certificates: list[x509.Certificate] = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise VerificationError(f"cannot read certificate {path}: {exc.strerror}") from exc
        try:
            certificates += parse_certificate_file(data)
        except ValueError as exc:
            raise VerificationError(f"{path}: not a PEM or DER X.509 certificate ({exc})") from exc
    return tuple(certificates)


def load_reference(path: Path) -> Reference:
    """A release's reference.json; an unreadable or malformed one is an error, not a skip."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VerificationError(f"cannot read reference {path}: {exc.strerror}") from exc
    try:
        return parse_reference(data)
    except ReferenceError as exc:
        raise VerificationError(f"{path}: {exc}") from exc
