"""OpenPGP v4 packets: key packets, user IDs, signature packets and their subpackets, written
from pyca/cryptography keys and read back (the module docstring of formats.openpgp says which
subset and why)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from ultraviolet.errors import FormatError
from ultraviolet.formats._reader import Bytes, Reader

# Packet tags (RFC 4880 4.3).
SIGNATURE_PACKET = 2
PUBLIC_KEY_PACKET = 6
MARKER_PACKET = 10
TRUST_PACKET = 12
USER_ID_PACKET = 13
PUBLIC_SUBKEY_PACKET = 14
USER_ATTRIBUTE_PACKET = 17

# Public-key algorithms (RFC 4880 9.1; EdDSA from RFC 9580 9.1 "EdDSALegacy").
RSA = 1
RSA_SIGN_ONLY = 3
EDDSA = 22
RSA_ALGORITHMS = (RSA, RSA_SIGN_ONLY)
ED25519_OID = bytes.fromhex("2b06010401da470f01")  # 1.3.6.1.4.1.11591.15.1

# Signature types (RFC 4880 5.2.1).
BINARY_DOCUMENT = 0x00
POSITIVE_CERTIFICATION = 0x13
CERTIFICATIONS = (0x10, 0x11, 0x12, 0x13)
KEY_REVOCATION = 0x20

# Signature subpackets (RFC 4880 5.2.3.1; issuer fingerprint from RFC 9580 5.2.3.35).
CREATION_TIME = 2
ISSUER_KEY_ID = 16
KEY_FLAGS = 27
ISSUER_FINGERPRINT = 33
# Subpackets whose meaning does not restrict validity or that we evaluate. A critical subpacket
# outside this set (e.g. an expiration time, which is not evaluated) makes a signature fail.
KNOWN_SUBPACKETS = frozenset({2, 4, 7, 11, 16, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 32, 33, 34})
CERTIFY_AND_SIGN = 0x03

SHA256 = 8
HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    8: hashes.SHA256,
    9: hashes.SHA384,
    10: hashes.SHA512,
    11: hashes.SHA224,
}

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
CryptoPublicKey = rsa.RSAPublicKey | ed25519.Ed25519PublicKey


class OpenPgpError(FormatError):
    pass


@dataclass(frozen=True)
class Packet:
    tag: int
    body: bytes
    header: bytes  # as found (old or new format), so that `encoded` is byte-exact
    offset: int  # of the header in the parsed input

    @property
    def encoded(self) -> bytes:
        return self.header + self.body


@dataclass(frozen=True)
class PublicKey:
    """A v4 public key or subkey packet body with its decoded key material."""

    created: int
    algorithm: int
    body: bytes  # the whole packet body: what the fingerprint and certifications hash
    rsa_numbers: tuple[int, int] | None = None  # (n, e)
    ed25519: bytes | None = None  # the 32-byte public point

    @property
    def fingerprint(self) -> bytes:
        return hashlib.sha1(_key_prefix(self)).digest()

    @property
    def key_id(self) -> bytes:
        return self.fingerprint[-8:]

    def crypto_key(self) -> CryptoPublicKey | None:
        """The key as a pyca/cryptography object, or None for an unsupported algorithm."""
        if self.rsa_numbers is not None:
            n, e = self.rsa_numbers
            return rsa.RSAPublicNumbers(e, n).public_key()
        if self.ed25519 is not None:
            return ed25519.Ed25519PublicKey.from_public_bytes(self.ed25519)
        return None


@dataclass(frozen=True)
class Subpacket:
    type: int
    critical: bool
    data: bytes


@dataclass(frozen=True)
class Signature:
    sig_type: int
    algorithm: int
    hash_algorithm: int
    hashed: tuple[Subpacket, ...]
    unhashed: tuple[Subpacket, ...]
    hashed_area: bytes  # version octet through the hashed subpackets: what the trailer covers
    left16: bytes
    material: bytes  # the algorithm-specific signature fields as found
    mpis: tuple[bytes, ...]  # decoded for RSA and EdDSA, else empty

    def _find(self, kind: int, areas: Iterable[tuple[Subpacket, ...]]) -> bytes | None:
        return next((s.data for area in areas for s in area if s.type == kind), None)

    @property
    def created(self) -> int | None:
        data = self._find(CREATION_TIME, [self.hashed])
        return int.from_bytes(data, "big") if data is not None and len(data) == 4 else None

    @property
    def issuer_fingerprint(self) -> bytes | None:
        data = self._find(ISSUER_FINGERPRINT, [self.hashed, self.unhashed])
        return data[1:] if data is not None and len(data) == 21 and data[0] == 4 else None

    @property
    def issuer_key_id(self) -> bytes | None:
        data = self._find(ISSUER_KEY_ID, [self.hashed, self.unhashed])
        if data is not None and len(data) == 8:
            return data
        fingerprint = self.issuer_fingerprint
        return fingerprint[-8:] if fingerprint is not None else None

    @property
    def key_flags(self) -> int | None:
        data = self._find(KEY_FLAGS, [self.hashed])
        return data[0] if data else None


@dataclass(frozen=True)
class TransferableKey:
    """A primary key with what follows it in a keyring (RFC 4880 11.1)."""

    key: PublicKey
    direct: tuple[Signature, ...]  # signatures on the key itself (revocations, direct-key)
    user_ids: tuple[bytes, ...]
    certifications: tuple[tuple[bytes, Signature], ...]  # (user ID, signature over it)
    subkeys: tuple[PublicKey, ...]


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    reason: str
    fingerprint: bytes | None = None  # of the key that made the good signature
    created: int | None = None  # the signature creation time


# --- Framing ------------------------------------------------------------------------------


def _length(size: int) -> bytes:
    """A new-format body length (also the subpacket length encoding)."""
    if size < 192:
        return bytes([size])
    if size < 8384:
        return bytes([((size - 192) >> 8) + 192, (size - 192) & 0xFF])
    return b"\xff" + size.to_bytes(4, "big")


def encode_packet(tag: int, body: bytes) -> bytes:
    """A packet with a new-format header (1, 2 or 5-octet length)."""
    return bytes([0xC0 | tag]) + _length(len(body)) + body


def _read_length(reader: Reader, start: int, *, packet: bool) -> int:
    """A new-format packet length, or with `packet` False a subpacket length."""
    octet = reader.u8()
    if octet < 192:
        return octet
    if octet < (224 if packet else 255):
        return ((octet - 192) << 8) + reader.u8() + 192
    if octet == 255:
        return int(reader.unpack(">I")[0])
    reader.fail("partial body lengths are not supported", start)


def _header(reader: Reader) -> tuple[int, int]:
    start = reader.pos
    first = reader.u8()
    if not first & 0x80:
        reader.fail("not a packet header (bit 7 clear)", start)
    if first & 0x40:
        tag, length = first & 0x3F, _read_length(reader, start, packet=True)
    else:
        tag, kind = (first >> 2) & 0x0F, first & 0x03
        if kind == 3:
            reader.fail("indeterminate packet lengths are not supported", start)
        length = reader.unpack((">B", ">H", ">I")[kind])[0]
    if tag == 0:
        reader.fail("reserved packet tag 0", start)
    return tag, length


def parse_packets(data: Bytes) -> list[Packet]:
    """Split binary OpenPGP data into packets (old- and new-format headers)."""
    reader = Reader(data, "OpenPGP packet", OpenPgpError)
    packets: list[Packet] = []
    while reader.remaining:
        start = reader.pos
        tag, length = _header(reader)
        header = reader.bytes_at(start, reader.pos - start)
        packets.append(Packet(tag, reader.read(length), header, start))
    return packets


def _body_reader(packet: Packet, structure: str) -> Reader:
    base = packet.offset + len(packet.header)
    return Reader(packet.body, structure, OpenPgpError, base=base)


def _mpi(value: bytes) -> bytes:
    value = value.lstrip(b"\0")
    bits = (len(value) - 1) * 8 + value[0].bit_length() if value else 0
    return bits.to_bytes(2, "big") + value


def _read_mpi(reader: Reader) -> bytes:
    bits = reader.unpack(">H")[0]
    return reader.read((bits + 7) // 8)


# --- Keys ---------------------------------------------------------------------------------


def _key_prefix(key: PublicKey) -> bytes:
    return b"\x99" + len(key.body).to_bytes(2, "big") + key.body


def parse_public_key(packet: Packet) -> PublicKey:
    """Decode a v4 public key or subkey packet."""
    reader = _body_reader(packet, "OpenPGP public key")
    if len(packet.body) > 0xFFFF:
        reader.fail("key packet too long for a v4 fingerprint", 0)
    version = reader.u8()
    if version != 4:
        reader.fail(f"unsupported key version {version}", 0)
    created, algorithm = reader.unpack(">IB")
    key = PublicKey(created, algorithm, bytes(packet.body))
    if algorithm in RSA_ALGORITHMS:
        n = int.from_bytes(_read_mpi(reader), "big")
        e = int.from_bytes(_read_mpi(reader), "big")
        key = PublicKey(created, algorithm, key.body, rsa_numbers=(n, e))
    elif algorithm == EDDSA:
        oid = reader.read(reader.u8())
        at = reader.pos
        point = _read_mpi(reader)
        if oid == ED25519_OID:
            if len(point) != 33 or point[0] != 0x40:
                reader.fail("Ed25519 point is not 0x40 followed by 32 octets", at)
            key = PublicKey(created, algorithm, key.body, ed25519=point[1:])
    else:
        reader.read(reader.remaining)  # material of an algorithm we do not use: kept in body
    if reader.remaining:
        reader.fail("trailing bytes after the key material")
    try:
        key.crypto_key()
    except ValueError as exc:
        reader.fail(f"invalid key material: {exc}", 0)
    return key


def public_key(key: PrivateKey | CryptoPublicKey, created: int) -> PublicKey:
    """The v4 public key of a pyca/cryptography key, created at `created` (Unix time)."""
    _check_time(created)
    private = (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)
    public = key.public_key() if isinstance(key, private) else key
    if not isinstance(public, (rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
        raise TypeError(f"unsupported key type {type(key).__name__}: RSA or Ed25519 expected")
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        n, e = numbers.n, numbers.e
        material = _mpi(n.to_bytes((n.bit_length() + 7) // 8, "big"))
        material += _mpi(e.to_bytes((e.bit_length() + 7) // 8, "big"))
        body = bytes([4]) + created.to_bytes(4, "big") + bytes([RSA]) + material
        return PublicKey(created, RSA, body, rsa_numbers=(n, e))
    point = public.public_bytes_raw()
    material = bytes([len(ED25519_OID)]) + ED25519_OID + _mpi(b"\x40" + point)
    body = bytes([4]) + created.to_bytes(4, "big") + bytes([EDDSA]) + material
    return PublicKey(created, EDDSA, body, ed25519=point)


def _check_time(value: int) -> None:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{value} is not a 32-bit Unix time")


# --- Signatures ---------------------------------------------------------------------------


def _subpackets(reader: Reader, size: int) -> tuple[Subpacket, ...]:
    end = reader.require(size) + size
    found: list[Subpacket] = []
    while reader.pos < end:
        start = reader.pos
        length = _read_length(reader, start, packet=False)
        if length == 0 or reader.pos + length > end:
            reader.fail(f"subpacket length {length} does not fit its area", start)
        kind = reader.u8()
        found.append(Subpacket(kind & 0x7F, bool(kind & 0x80), reader.read(length - 1)))
    return tuple(found)


def parse_signature(packet: Packet) -> Signature:
    """Decode a v4 signature packet."""
    reader = _body_reader(packet, "OpenPGP signature")
    version = reader.u8()
    if version != 4:
        reader.fail(f"unsupported signature version {version}", 0)
    sig_type, algorithm, hash_algorithm, hashed_size = reader.unpack(">BBBH")
    hashed = _subpackets(reader, hashed_size)
    hashed_area = reader.bytes_at(0, reader.pos)
    unhashed = _subpackets(reader, reader.unpack(">H")[0])
    left16 = reader.read(2)
    start = reader.pos
    mpis: list[bytes] = []
    if algorithm in RSA_ALGORITHMS or algorithm == EDDSA:
        for _ in range(1 if algorithm in RSA_ALGORITHMS else 2):
            mpis.append(_read_mpi(reader))
        if reader.remaining:
            reader.fail("trailing bytes after the signature")
    material = reader.bytes_at(start, len(packet.body) - start)
    return Signature(
        sig_type,
        algorithm,
        hash_algorithm,
        hashed,
        unhashed,
        hashed_area,
        left16,
        material,
        tuple(mpis),
    )


def _digest(signature: Signature, prefix: bytes) -> bytes | None:
    """The hash of `prefix`, the hashed area and the v4 trailer (RFC 4880 5.2.4)."""
    algorithm = HASHES.get(signature.hash_algorithm)
    if algorithm is None:
        return None
    hasher = hashes.Hash(algorithm())
    hasher.update(prefix)
    hasher.update(signature.hashed_area)
    hasher.update(b"\x04\xff" + len(signature.hashed_area).to_bytes(4, "big"))
    return hasher.finalize()


def _subpacket(kind: int, data: bytes) -> bytes:
    return _length(len(data) + 1) + bytes([kind]) + data


def _make_signature(
    private_key: PrivateKey,
    key: PublicKey,
    sig_type: int,
    created: int,
    extra: bytes,
    prefix: bytes,
) -> bytes:
    """A signature packet; `extra` holds hashed subpackets besides creation time and issuer."""
    hashed = _subpacket(CREATION_TIME, created.to_bytes(4, "big")) + extra
    hashed += _subpacket(ISSUER_FINGERPRINT, b"\x04" + key.fingerprint)
    hashed_area = bytes([4, sig_type, key.algorithm, SHA256]) + len(hashed).to_bytes(2, "big")
    hashed_area += hashed
    hasher = hashes.Hash(hashes.SHA256())
    for part in (prefix, hashed_area, b"\x04\xff" + len(hashed_area).to_bytes(4, "big")):
        hasher.update(part)
    digest = hasher.finalize()
    if isinstance(private_key, rsa.RSAPrivateKey):
        value = private_key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        material = _mpi(value)
    else:
        value = private_key.sign(digest)  # EdDSA signs the OpenPGP hash value
        material = _mpi(value[:32]) + _mpi(value[32:])
    unhashed = _subpacket(ISSUER_KEY_ID, key.key_id)
    body = hashed_area + len(unhashed).to_bytes(2, "big") + unhashed + digest[:2] + material
    return encode_packet(SIGNATURE_PACKET, body)


def _matching(private_key: PrivateKey, key: PublicKey, created: int) -> None:
    _check_time(created)
    if created < key.created:
        raise ValueError("a signature cannot be older than its key")
    expected = public_key(private_key, key.created)
    if (expected.rsa_numbers, expected.ed25519) != (key.rsa_numbers, key.ed25519):
        raise ValueError("the private key does not belong to the given public key")


def public_key_block(private_key: PrivateKey, user_id: str, created: int) -> bytes:
    """A binary transferable public key: key packet, user ID, positive self-certification.

    This is what import-pubring.gpg holds; several such blocks may be concatenated.
    """
    key = public_key(private_key, created)
    uid = user_id.encode()
    prefix = _key_prefix(key) + b"\xb4" + len(uid).to_bytes(4, "big") + uid
    flags = _subpacket(KEY_FLAGS, bytes([CERTIFY_AND_SIGN]))
    certification = _make_signature(
        private_key, key, POSITIVE_CERTIFICATION, created, flags, prefix
    )
    return (
        encode_packet(PUBLIC_KEY_PACKET, key.body)
        + encode_packet(USER_ID_PACKET, uid)
        + certification
    )


def sign_detached(data: bytes, private_key: PrivateKey, created: int, key: PublicKey) -> bytes:
    """One binary document signature packet over `data` (SHA256SUMS.gpg), SHA-256.

    `key` is the public key as published (its creation time is part of the fingerprint), e.g.
    `public_key(private_key, key_created)` or `parse_keyring(block)[0].key`.
    """
    _matching(private_key, key, created)
    return _make_signature(private_key, key, BINARY_DOCUMENT, created, b"", data)
