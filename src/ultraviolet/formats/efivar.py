"""UEFI Secure Boot variables as the firmware measures them into PCR 7 (UEFI 2.10, 32.4.1).

PK, KEK, db and dbx hold EFI_SIGNATURE_LISTs back to back: {SignatureType GUID,
SignatureListSize u32, SignatureHeaderSize u32, SignatureSize u32, header, signatures}, each
signature an EFI_SIGNATURE_DATA {SignatureOwner GUID, SignatureData}. For EFI_CERT_X509_GUID
lists the data is one DER certificate. GUIDs are stored mixed-endian (uuid's bytes_le).
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from ultraviolet.errors import FormatError
from ultraviolet.formats._reader import Bytes, Reader

EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")  # SecureBoot, PK, KEK
EFI_IMAGE_SECURITY_DATABASE = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")  # db, dbx
EFI_CERT_X509 = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_CERT_SHA256 = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328")
SIGNATURE_LIST_HEADER = 28
_LIST_HEAD = struct.Struct("<16sIII")


class EfiVariableError(FormatError):
    pass


@dataclass(frozen=True)
class SignatureData:
    owner: uuid.UUID
    data: bytes


@dataclass(frozen=True)
class SignatureList:
    signature_type: uuid.UUID
    header: bytes
    signatures: tuple[SignatureData, ...]

    @property
    def is_x509(self) -> bool:
        return self.signature_type == EFI_CERT_X509

    def to_bytes(self) -> bytes:
        size = 16 + max((len(s.data) for s in self.signatures), default=0)
        if any(len(s.data) + 16 != size for s in self.signatures):
            raise EfiVariableError("EFI_SIGNATURE_LIST", "signatures of different sizes")
        body = b"".join(s.owner.bytes_le + s.data for s in self.signatures)
        total = SIGNATURE_LIST_HEADER + len(self.header) + len(body)
        head = struct.pack("<III", total, len(self.header), size)
        return self.signature_type.bytes_le + head + self.header + body


def _read_list(r: Reader) -> SignatureList:
    start = r.pos
    signature_type = uuid.UUID(bytes_le=r.read(16))
    total, header_size, size = r.unpack("<III")
    if size < 16 or total < SIGNATURE_LIST_HEADER + header_size:
        r.fail(f"list of {total} bytes, header {header_size}, signatures of {size}", start + 16)
    body = total - SIGNATURE_LIST_HEADER - header_size
    if body % size:
        r.fail(f"{body} bytes of signatures are not a multiple of {size}", start + 16)
    header = r.read(header_size)
    signatures = []
    for _ in range(body // size):
        owner = uuid.UUID(bytes_le=r.read(16))
        signatures.append(SignatureData(owner, r.read(size - 16)))
    return SignatureList(signature_type, header, tuple(signatures))


def parse_signature_lists(data: Bytes) -> tuple[SignatureList, ...]:
    """The EFI_SIGNATURE_LISTs of a PK/KEK/db/dbx value (empty for an empty variable)."""
    r = Reader(data, "EFI_SIGNATURE_LIST", EfiVariableError)
    lists = []
    while r.remaining:
        lists.append(_read_list(r))
    return tuple(lists)


def x509_signature_list(certificates: Sequence[bytes], owner: uuid.UUID) -> bytes:
    """One EFI_SIGNATURE_LIST per DER certificate (sizes differ), as enrolment tools write."""
    return b"".join(
        SignatureList(EFI_CERT_X509, b"", (SignatureData(owner, der),)).to_bytes()
        for der in certificates
    )


def certificate_fingerprints(lists: Sequence[SignatureList]) -> tuple[bytes, ...]:
    """SHA-256 of each X.509 certificate in the lists, in order."""
    return tuple(
        hashlib.sha256(signature.data).digest()
        for signature_list in lists
        if signature_list.is_x509
        for signature in signature_list.signatures
    )


def x509_fingerprints(data: bytes) -> tuple[bytes, ...] | None:
    """certificate_fingerprints(parse_signature_lists(data)) where every list is X.509 and the
    value parses; None otherwise (the checked path then says what is wrong). The verifier
    reads PK, KEK and db of every boot: no dataclass per list here."""
    fingerprints = []
    offset, end, x509 = 0, len(data), EFI_CERT_X509.bytes_le
    while offset < end:
        if offset + SIGNATURE_LIST_HEADER > end:
            return None
        kind, total, header_size, size = _LIST_HEAD.unpack_from(data, offset)
        if kind != x509 or size < 16 or total < SIGNATURE_LIST_HEADER + header_size:
            return None
        body = total - SIGNATURE_LIST_HEADER - header_size
        start = offset + SIGNATURE_LIST_HEADER + header_size
        offset = start + body
        if body % size or offset > end:
            return None
        for at in range(start, offset, size):
            fingerprints.append(hashlib.sha256(data[at + 16 : at + size]).digest())
    return tuple(fingerprints)


def uefi_variable_data(vendor: uuid.UUID, name: str, data: bytes) -> bytes:
    """UEFI_VARIABLE_DATA, the event data of EV_EFI_VARIABLE_* events."""
    encoded = name.encode("utf-16-le")
    return vendor.bytes_le + struct.pack("<QQ", len(encoded) // 2, len(data)) + encoded + data
