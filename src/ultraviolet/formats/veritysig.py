"""The verity-sig partition (Discoverable Partitions Spec): a NUL-padded JSON object

    {"rootHash": HEX, "certificateFingerprint": HEX, "signature": BASE64}

where the fingerprint is SHA-256 over the signing certificate's DER and the signature a DER
PKCS#7 detached signature over the root hash written as lowercase hex (no newline), the same
signature the kernel checks for dm-verity root_hash_sig.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ultraviolet.errors import FormatError
from ultraviolet.formats._reader import Bytes
from ultraviolet.formats.pkcs7 import (
    Pkcs7Error,
    SignatureCheck,
    parse_signed_data,
    sign_detached,
    verify_signed_data,
)

MAX_JSON = 1 << 20


class VeritySigError(FormatError):
    pass


@dataclass(frozen=True)
class VeritySignature:
    root_hash: bytes
    certificate_fingerprint: bytes
    signature: bytes  # DER PKCS#7

    @property
    def signed_content(self) -> bytes:
        return self.root_hash.hex().encode("ascii")


def certificate_fingerprint(certificate: x509.Certificate) -> bytes:
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest()


def _json_text(partition: Bytes) -> str:
    data = bytes(partition[:MAX_JSON]) if len(partition) > MAX_JSON else bytes(partition)
    end = data.find(b"\0")
    if end == -1:
        end = len(data)
    if end == 0:
        raise VeritySigError("verity-sig", "empty: no JSON object", 0)
    padding = data[end:]
    if padding.strip(b"\0"):
        bad = end + len(padding) - len(padding.lstrip(b"\0"))
        raise VeritySigError(
            "verity-sig", "garbage after the JSON object (expected NUL padding)", bad
        )
    try:
        return data[:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VeritySigError("verity-sig", "JSON is not UTF-8", exc.start) from exc


def _field(document: dict[str, object], key: str) -> str:
    value = document.get(key)
    if not isinstance(value, str):
        raise VeritySigError("verity-sig JSON", f"{key!r} missing or not a string", 0)
    return value


def parse_verity_sig(partition: Bytes) -> VeritySignature:
    text = _json_text(partition)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise VeritySigError("verity-sig JSON", exc.msg, exc.pos) from exc
    if not isinstance(document, dict):
        raise VeritySigError("verity-sig JSON", "not a JSON object", 0)
    try:
        root_hash = bytes.fromhex(_field(document, "rootHash"))
        fingerprint = bytes.fromhex(_field(document, "certificateFingerprint"))
    except ValueError as exc:
        raise VeritySigError("verity-sig JSON", f"bad hex: {exc}", 0) from exc
    try:
        signature = base64.b64decode(_field(document, "signature"), validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII text
        raise VeritySigError("verity-sig JSON", f"signature is not base64: {exc}", 0) from exc
    if len(root_hash) < 16 or len(fingerprint) != 32:
        raise VeritySigError(
            "verity-sig JSON", "rootHash must be a hash and certificateFingerprint 32 bytes", 0
        )
    return VeritySignature(root_hash, fingerprint, signature)


def render_verity_sig(signature: VeritySignature, *, size: int | None = None) -> bytes:
    """Compact JSON as systemd-repart writes it, NUL-padded to `size` bytes if given."""
    text = json.dumps(
        {
            "rootHash": signature.root_hash.hex(),
            "certificateFingerprint": signature.certificate_fingerprint.hex(),
            "signature": base64.b64encode(signature.signature).decode("ascii"),
        },
        separators=(",", ":"),
    ).encode("ascii")
    if size is None:
        return text
    if len(text) > size:
        raise VeritySigError("verity-sig", f"{len(text)} bytes of JSON do not fit {size}")
    return text.ljust(size, b"\0")


def create_verity_sig(
    root_hash: bytes,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    certificate: x509.Certificate,
) -> VeritySignature:
    content = root_hash.hex().encode("ascii")
    signature = sign_detached(content, key, certificate, include_certificate=True)
    return VeritySignature(root_hash, certificate_fingerprint(certificate), signature)


def verify_verity_sig(
    signature: VeritySignature, trusted: Sequence[x509.Certificate]
) -> SignatureCheck:
    """The PKCS#7 signature over the hex root hash, by a trusted certificate."""
    try:
        signed = parse_signed_data(signature.signature)
    except Pkcs7Error as exc:
        return SignatureCheck(False, f"signature is not PKCS#7: {exc}")
    check = verify_signed_data(signed, trusted, detached_content=signature.signed_content)
    signer = check.signer
    if signer is not None and certificate_fingerprint(signer) != signature.certificate_fingerprint:
        return SignatureCheck(
            False, "certificateFingerprint does not name the certificate that signed"
        )
    return check
