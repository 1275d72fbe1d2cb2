"""Authenticode: the PE image digest (what UEFI firmware verifies and measures into PCR 4) and
verification of the embedded signatures.

The digest follows EDK2's DxeImageVerificationLib: the headers without the CheckSum field and
the certificate-table directory entry, the sections in file order, then whatever follows them
except the certificate table itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from ultraviolet.errors import FormatError
from ultraviolet.formats import der
from ultraviolet.formats._reader import Bytes, Reader
from ultraviolet.formats.pe import PeError, PeImage, parse_pe
from ultraviolet.formats.pkcs7 import (
    SPC_INDIRECT_DATA,
    Pkcs7Error,
    parse_signed_data,
    verify_signed_data,
)

WIN_CERT_REVISION_2 = 0x0200
WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002
DIGEST_OIDS = {
    "1.3.14.3.2.26": "sha1",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}


class AuthenticodeError(FormatError):
    pass


@dataclass(frozen=True)
class AuthenticodeCheck:
    ok: bool
    reason: str
    digest: bytes  # the image digest (of the signature's algorithm; sha256 when unsigned)
    signer: x509.Certificate | None = None


def _pe(image: Bytes) -> PeImage:
    try:
        return parse_pe(image)
    except PeError as exc:
        raise AuthenticodeError("Authenticode " + exc.structure, exc.detail, exc.offset) from exc


def authenticode_digest(image: Bytes, algorithm: str = "sha256") -> bytes:
    pe = _pe(image)
    view = memoryview(image).cast("B")
    reader = Reader(image, "PE image", AuthenticodeError)
    reader.require(pe.size_of_headers, 0)
    hasher = hashlib.new(algorithm)
    security = pe.certificate_table
    hasher.update(view[: pe.checksum_offset])
    if security is None:
        hasher.update(view[pe.checksum_offset + 4 : pe.size_of_headers])
    else:
        hasher.update(view[pe.checksum_offset + 4 : security.entry_offset])
        hasher.update(view[security.entry_offset + 8 : pe.size_of_headers])
    hashed = pe.size_of_headers
    for section in sorted(pe.sections, key=lambda s: s.pointer_to_raw_data):
        if section.size_of_raw_data == 0:
            continue
        start = section.pointer_to_raw_data
        hasher.update(view[start : start + section.size_of_raw_data])
        hashed += section.size_of_raw_data
    certificate_size = security.size if security else 0
    if len(view) > hashed + certificate_size:
        hasher.update(view[hashed : len(view) - certificate_size])
    return hasher.digest()


def embedded_signatures(image: Bytes) -> tuple[bytes, ...]:
    """The PKCS#7 blobs of the WIN_CERTIFICATE entries in the certificate table."""
    pe = _pe(image)
    security = pe.certificate_table
    if security is None or security.virtual_address == 0 or security.size == 0:
        return ()
    reader = Reader(image, "certificate table", AuthenticodeError)
    table = reader.bytes_at(security.virtual_address, security.size)
    blobs = []
    at = 0
    while at + 8 <= len(table):
        length, revision, kind = Reader(
            table, "WIN_CERTIFICATE", AuthenticodeError, base=security.virtual_address
        ).unpack_at("<IHH", at)
        if length < 8 or at + length > len(table):
            reader.fail(
                f"WIN_CERTIFICATE length {length} out of bounds", security.virtual_address + at
            )
        if revision == WIN_CERT_REVISION_2 and kind == WIN_CERT_TYPE_PKCS_SIGNED_DATA:
            blobs.append(
                _without_padding(table[at + 8 : at + length], security.virtual_address + at + 8)
            )
        at += (length + 7) // 8 * 8
    return tuple(blobs)


def _without_padding(blob: bytes, offset: int) -> bytes:
    """Signers pad bCertificate to 8 bytes with zeros after the DER; drop exactly that."""
    try:
        _, end = der.read_element(blob, base=offset)
    except der.DerError:
        return blob  # left for the PKCS#7 parser to report
    if blob[end:].strip(b"\0"):
        raise AuthenticodeError(
            "WIN_CERTIFICATE", "non-zero bytes after the signature", offset + end
        )
    return blob[:end]


def indirect_data_digest(content: bytes) -> tuple[str, bytes]:
    """(algorithm, digest) from a DER SpcIndirectDataContent."""
    try:
        fields = der.child_list(der.parse(content), "SpcIndirectDataContent", 2)
        digest_info = der.child_list(fields[1], "DigestInfo", 2)
        algorithm = der.child_list(digest_info[0], "AlgorithmIdentifier", 1)[0]
        oid = der.decode_oid(algorithm)
        digest = digest_info[1].expect(der.OCTET_STRING, "digest").content
    except der.DerError as exc:
        raise AuthenticodeError("SpcIndirectDataContent", exc.detail, exc.offset) from exc
    if oid not in DIGEST_OIDS:
        raise AuthenticodeError("SpcIndirectDataContent", f"unknown digest algorithm {oid}")
    return DIGEST_OIDS[oid], digest


def verify_authenticode(image: Bytes, trusted: Sequence[x509.Certificate]) -> AuthenticodeCheck:
    """Whether an embedded signature covers this image and is by a trusted certificate."""
    blobs = embedded_signatures(image)
    if not blobs:
        return AuthenticodeCheck(False, "the image is not signed", authenticode_digest(image))
    reasons = []
    digest = b""
    for blob in blobs:
        try:
            signed = parse_signed_data(blob)
        except Pkcs7Error as exc:
            reasons.append(f"signature is not PKCS#7: {exc}")
            continue
        if signed.content_type != SPC_INDIRECT_DATA or signed.content_element is None:
            reasons.append("signature does not carry SpcIndirectDataContent")
            continue
        algorithm, signed_digest = indirect_data_digest(signed.content_element)
        digest = authenticode_digest(image, algorithm)
        if digest != signed_digest:
            reasons.append("the image digest does not match the signed digest (image altered)")
            continue
        check = verify_signed_data(signed, trusted)
        if check.ok:
            return AuthenticodeCheck(True, "signature verifies", digest, check.signer)
        reasons.append(check.reason)
    return AuthenticodeCheck(False, "; ".join(reasons), digest or authenticode_digest(image))
