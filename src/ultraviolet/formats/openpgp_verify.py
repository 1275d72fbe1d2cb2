"""OpenPGP keyrings and signature verification (RFC 4880 11.1, 5.2.4), and ASCII armor (6).

Importable from formats.openpgp; packets, keys and signature packets are in openpgp_packets.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from ultraviolet.formats._reader import Bytes
from ultraviolet.formats.openpgp_packets import (
    BINARY_DOCUMENT,
    CERTIFICATIONS,
    EDDSA,
    HASHES,
    KEY_REVOCATION,
    KNOWN_SUBPACKETS,
    MARKER_PACKET,
    PUBLIC_KEY_PACKET,
    PUBLIC_SUBKEY_PACKET,
    RSA_ALGORITHMS,
    SIGNATURE_PACKET,
    TRUST_PACKET,
    USER_ATTRIBUTE_PACKET,
    USER_ID_PACKET,
    OpenPgpError,
    Packet,
    PublicKey,
    Signature,
    TransferableKey,
    VerifyResult,
    _digest,
    _key_prefix,
    parse_packets,
    parse_public_key,
    parse_signature,
)

# --- Keyrings and verification ------------------------------------------------------------


def _version(packet: Packet) -> int | None:
    return packet.body[0] if packet.body else None


@dataclass
class _Block:
    """A transferable key being collected from a keyring's packets."""

    key: PublicKey
    direct: list[Signature] = field(default_factory=list)
    user_ids: list[bytes] = field(default_factory=list)
    certifications: list[tuple[bytes, Signature]] = field(default_factory=list)
    subkeys: list[PublicKey] = field(default_factory=list)
    on_key: bool = True  # signatures that follow are on the primary key itself
    user_id: bytes | None = None  # signatures that follow certify this user ID

    def add(self, packet: Packet) -> None:
        if packet.tag == SIGNATURE_PACKET and _version(packet) == 4:
            signature = parse_signature(packet)
            if self.on_key:
                self.direct.append(signature)
            elif self.user_id is not None:
                self.certifications.append((self.user_id, signature))
            return
        if packet.tag in (USER_ID_PACKET, USER_ATTRIBUTE_PACKET, PUBLIC_SUBKEY_PACKET):
            self.on_key, self.user_id = False, None
        if packet.tag == USER_ID_PACKET:
            self.user_ids.append(packet.body)
            self.user_id = packet.body
        elif packet.tag == PUBLIC_SUBKEY_PACKET and _version(packet) == 4:
            self.subkeys.append(parse_public_key(packet))

    def freeze(self) -> TransferableKey:
        return TransferableKey(
            self.key,
            tuple(self.direct),
            tuple(self.user_ids),
            tuple(self.certifications),
            tuple(self.subkeys),
        )


def parse_keyring(data: Bytes) -> tuple[TransferableKey, ...]:
    """Group a binary keyring's packets by primary key; keys other than v4 are
    skipped with everything that belongs to them."""
    blocks: list[_Block] = []
    skipping = False
    for packet in parse_packets(data):
        if packet.tag == PUBLIC_KEY_PACKET:
            skipping = _version(packet) != 4
            if not skipping:
                blocks.append(_Block(parse_public_key(packet)))
        elif skipping:
            continue
        elif blocks:
            blocks[-1].add(packet)
        elif packet.tag not in (MARKER_PACKET, TRUST_PACKET):
            raise OpenPgpError(
                "OpenPGP keyring", "a public key packet must come first", packet.offset
            )
    return tuple(block.freeze() for block in blocks)


def _signature_valid(key: PublicKey, signature: Signature, digest: bytes) -> bool:
    public = key.crypto_key()
    try:
        if isinstance(public, rsa.RSAPublicKey) and signature.algorithm in RSA_ALGORITHMS:
            size = (public.key_size + 7) // 8
            value = signature.mpis[0]
            if len(value) > size:
                return False
            algorithm = HASHES[signature.hash_algorithm]()
            public.verify(
                value.rjust(size, b"\0"), digest, padding.PKCS1v15(), Prehashed(algorithm)
            )
            return True
        if isinstance(public, ed25519.Ed25519PublicKey) and signature.algorithm == EDDSA:
            r, s = signature.mpis
            if len(r) > 32 or len(s) > 32:
                return False
            public.verify(r.rjust(32, b"\0") + s.rjust(32, b"\0"), digest)
            return True
    except (InvalidSignature, ValueError):
        return False
    return False


def _check(signature: Signature, key: PublicKey, prefix: bytes) -> str | None:
    """Why `signature` by `key` over `prefix` does not verify, or None if it does."""
    digest = _digest(signature, prefix)
    if digest is None:
        return f"unsupported hash algorithm {signature.hash_algorithm}"
    if digest[:2] != signature.left16:
        return "the hash does not match the signature's hash prefix (data or signature modified)"
    critical = [s.type for s in signature.hashed if s.critical and s.type not in KNOWN_SUBPACKETS]
    if critical:
        return f"unknown critical subpacket {critical[0]}"
    if not _signature_valid(key, signature, digest):
        return f"the signature does not verify with key {key.fingerprint.hex().upper()}"
    return None


def _issued_by(signature: Signature, key: PublicKey) -> bool:
    if signature.issuer_fingerprint is not None:
        return signature.issuer_fingerprint == key.fingerprint
    return signature.issuer_key_id == key.key_id


def _revoked(block: TransferableKey) -> bool:
    return any(
        s.sig_type == KEY_REVOCATION
        and _issued_by(s, block.key)
        and _check(s, block.key, _key_prefix(block.key)) is None
        for s in block.direct
    )


def verify_self_certification(block: TransferableKey, user_id: bytes) -> VerifyResult:
    """Whether `block` carries a valid self-certification of `user_id`."""
    key = block.key
    prefix = _key_prefix(key) + b"\xb4" + len(user_id).to_bytes(4, "big") + user_id
    reasons = ["no self-certification of this user ID"]
    for uid, signature in block.certifications:
        if uid == user_id and signature.sig_type in CERTIFICATIONS and _issued_by(signature, key):
            problem = _check(signature, key, prefix)
            if problem is None:
                return VerifyResult(True, "good self-certification", key.fingerprint)
            reasons.append(problem)
    return VerifyResult(False, reasons[-1])


def _check_detached(
    signature: Signature, data: bytes, keyring: tuple[TransferableKey, ...]
) -> VerifyResult:
    if signature.sig_type != BINARY_DOCUMENT:
        return VerifyResult(False, f"signature type 0x{signature.sig_type:02x} is not binary")
    if signature.issuer_key_id is None:
        return VerifyResult(False, "the signature names no issuer")
    created = signature.created
    if created is None:
        return VerifyResult(False, "the signature has no hashed creation time")
    blocks = [b for b in keyring if _issued_by(signature, b.key)]
    if not blocks:
        if any(_issued_by(signature, k) for b in keyring for k in b.subkeys):
            return VerifyResult(False, "signed by a subkey, which is not supported")
        return VerifyResult(False, f"no key {signature.issuer_key_id.hex().upper()} in keyring")
    reason = ""
    for block in blocks:
        problem = _check(signature, block.key, data)
        if created < block.key.created:
            problem = "the signature is older than its key"
        if _revoked(block):
            problem = f"key {block.key.fingerprint.hex().upper()} is revoked"
        if problem is None:
            return VerifyResult(True, "good signature", block.key.fingerprint, created)
        reason = problem
    return VerifyResult(False, reason)


def verify_detached(signature: Bytes, data: Bytes, keyring: Bytes) -> VerifyResult:
    """Check a binary detached signature over `data` against `keyring`.

    A failed check is a result, never an exception; OpenPgpError means unparsable input.
    """
    packets = parse_packets(signature)
    keys = parse_keyring(keyring)
    signatures: list[Signature] = []
    for packet in packets:
        if packet.tag == MARKER_PACKET:
            continue
        if packet.tag != SIGNATURE_PACKET:
            return VerifyResult(False, f"not a detached signature: packet tag {packet.tag}")
        if _version(packet) != 4:
            return VerifyResult(False, f"unsupported signature version {_version(packet)}")
        signatures.append(parse_signature(packet))
    if not signatures:
        return VerifyResult(False, "no signature packet")
    results = [_check_detached(s, bytes(data), keys) for s in signatures]
    return next((r for r in results if not r.ok), results[0])


# --- ASCII armor (RFC 4880 6) -------------------------------------------------------------


def _crc24(data: bytes) -> int:
    crc = 0xB704CE
    for octet in data:
        crc ^= octet << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def armor(data: bytes, kind: str = "SIGNATURE") -> bytes:
    """ASCII armor, e.g. kind "SIGNATURE" (SHA256SUMS.asc) or "PUBLIC KEY BLOCK"."""
    text = base64.b64encode(data).decode()
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    checksum = base64.b64encode(_crc24(data).to_bytes(3, "big")).decode()
    return "\n".join(
        [f"-----BEGIN PGP {kind}-----", "", *lines, f"={checksum}", f"-----END PGP {kind}-----", ""]
    ).encode()
