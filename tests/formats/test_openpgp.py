"""OpenPGP: framing, keys, signatures; our signatures verify, tampering fails, garbage -> error."""

from __future__ import annotations

import base64
import contextlib
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from ultraviolet.formats.openpgp import (
    BINARY_DOCUMENT,
    EDDSA,
    ISSUER_FINGERPRINT,
    KEY_FLAGS,
    KEY_REVOCATION,
    PUBLIC_KEY_PACKET,
    PUBLIC_SUBKEY_PACKET,
    RSA,
    SIGNATURE_PACKET,
    TRUST_PACKET,
    USER_ID_PACKET,
    OpenPgpError,
    Packet,
    PrivateKey,
    _key_prefix,
    _make_signature,
    _mpi,
    _subpacket,
    armor,
    encode_packet,
    parse_keyring,
    parse_packets,
    parse_public_key,
    parse_signature,
    public_key,
    public_key_block,
    sign_detached,
    verify_detached,
    verify_self_certification,
)

KEY_CREATED = 1_700_000_000
SIGNED = 1_700_000_100
USER_ID = "Ultraviolet updates <updates@example.org>"
DATA = b"0e9a00811725c6c46aac24ab5213399559914437a433128614f3f234ff02ddb5 *usr_1.2.3.raw\n"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32))
KEYS: dict[str, PrivateKey] = {"rsa": RSA_KEY, "ed25519": ED_KEY}
# What gpg 2.4 prints for ED_KEY created at KEY_CREATED (`gpg --import-options show-only`).
ED_FINGERPRINT = "0550F45F55746CECA3E8AE97F7A32568E2019652"


@pytest.fixture(params=sorted(KEYS))
def private_key(request: pytest.FixtureRequest) -> PrivateKey:
    return KEYS[request.param]


def _signed(private_key: PrivateKey, data: bytes = DATA) -> tuple[bytes, bytes]:
    """(keyring, signature) made by our writer."""
    block = public_key_block(private_key, USER_ID, KEY_CREATED)
    return block, sign_detached(data, private_key, SIGNED, public_key(private_key, KEY_CREATED))


# --- Framing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "header_size"), [(0, 2), (191, 2), (192, 3), (8383, 3), (8384, 6), (70000, 6)]
)
def test_new_format_lengths_round_trip(size: int, header_size: int) -> None:
    body = bytes(i % 251 for i in range(size))
    encoded = encode_packet(USER_ID_PACKET, body) + encode_packet(TRUST_PACKET, b"t")
    first, second = parse_packets(encoded)
    assert (first.tag, first.body, len(first.header), first.offset) == (13, body, header_size, 0)
    assert (second.tag, second.body, second.offset) == (12, b"t", size + header_size)
    assert first.encoded + second.encoded == encoded


@pytest.mark.parametrize(
    "encoded",
    [b"\xb4\x03abc", b"\xb5\x00\x03abc", b"\xb6\x00\x00\x00\x03abc"],
    ids=["1-octet", "2-octet", "4-octet"],
)
def test_old_format_headers(encoded: bytes) -> None:
    (packet,) = parse_packets(encoded)
    assert (packet.tag, packet.body, packet.encoded) == (USER_ID_PACKET, b"abc", encoded)


@pytest.mark.parametrize(
    ("data", "message", "offset"),
    [
        (b"\x7f", "bit 7 clear", 0),
        (b"\xcd\x01a\xcd\xe1abc", "partial body", 3),
        (b"\xb7abc", "indeterminate", 0),
        (b"\xc0\x00", "reserved packet tag 0", 0),
        (b"\xcd\x05ab", "truncated", 2),
        (b"\xcd\xff\x00\x00", "truncated", 2),
        (b"\xcd", "truncated", 1),
    ],
)
def test_framing_errors(data: bytes, message: str, offset: int) -> None:
    with pytest.raises(OpenPgpError, match=message) as caught:
        parse_packets(data)
    assert caught.value.offset == offset


def test_mpi_encoding() -> None:
    assert _mpi(b"") == b"\x00\x00"
    assert _mpi(b"\x00\x01") == b"\x00\x01\x01"
    assert _mpi(b"\x80\x00") == b"\x00\x10\x80\x00"
    assert _mpi(b"\x40" + bytes(32))[:2] == (263).to_bytes(2, "big")  # Ed25519 point


# --- Keys ---------------------------------------------------------------------------------


def test_ed25519_fingerprint_matches_gpg() -> None:
    key = public_key(ED_KEY, KEY_CREATED)
    assert key.fingerprint.hex().upper() == ED_FINGERPRINT
    assert key.key_id.hex().upper() == ED_FINGERPRINT[-16:]
    assert key.body.startswith(bytes([4]) + KEY_CREATED.to_bytes(4, "big") + bytes([EDDSA]))


def test_fingerprint_is_sha1_of_the_v4_prefix(private_key: PrivateKey) -> None:
    key = public_key(private_key, KEY_CREATED)
    prefix = b"\x99" + len(key.body).to_bytes(2, "big") + key.body
    assert key.fingerprint == hashlib.sha1(prefix).digest()
    assert public_key(private_key.public_key(), KEY_CREATED) == key
    assert public_key(private_key, KEY_CREATED + 1).fingerprint != key.fingerprint


def test_public_key_packet_round_trip(private_key: PrivateKey) -> None:
    key = public_key(private_key, KEY_CREATED)
    (packet,) = parse_packets(encode_packet(PUBLIC_KEY_PACKET, key.body))
    parsed = parse_public_key(packet)
    assert parsed == key
    assert parsed.algorithm == (RSA if isinstance(private_key, rsa.RSAPrivateKey) else EDDSA)
    crypto = parsed.crypto_key()
    assert crypto is not None and crypto == private_key.public_key()


def test_unsupported_key_types_and_times() -> None:
    with pytest.raises(TypeError, match="RSA or Ed25519"):
        public_key(ec.generate_private_key(ec.SECP256R1()), KEY_CREATED)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="32-bit"):
        public_key(ED_KEY, 1 << 32)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\x05" + bytes(8), "unsupported key version 5"),
        (b"\x04\x00\x00\x00\x00\x16\x09" + bytes.fromhex("2b06010401da470f01") + b"\x01\x07\x41"
         + bytes(32), "0x40"),
        (b"\x04\x00\x00\x00\x00\x01\x00\x01\x01\x00\x01\x03\x00", "trailing"),
        (b"\x04\x00\x00\x00\x00\x01\x00\x01\x02\x00\x02\x03", "invalid key material"),
        (b"\x04\x00\x00\x00\x00\x01\x08\x00\x01", "truncated"),
    ],
)  # fmt: skip
def test_public_key_errors(body: bytes, message: str) -> None:
    with pytest.raises(OpenPgpError, match=message):
        parse_public_key(parse_packets(encode_packet(PUBLIC_KEY_PACKET, body))[0])


def test_unknown_algorithm_keys_are_kept() -> None:
    body = b"\x04" + KEY_CREATED.to_bytes(4, "big") + b"\x13" + b"opaque ecdsa material"
    key = parse_public_key(parse_packets(encode_packet(PUBLIC_KEY_PACKET, body))[0])
    assert key.body == body and key.crypto_key() is None
    assert key.fingerprint == hashlib.sha1(_key_prefix(key)).digest()


# --- Transferable keys --------------------------------------------------------------------


def test_public_key_block(private_key: PrivateKey) -> None:
    block = public_key_block(private_key, USER_ID, KEY_CREATED)
    packets = parse_packets(block)
    assert [p.tag for p in packets] == [PUBLIC_KEY_PACKET, USER_ID_PACKET, SIGNATURE_PACKET]
    assert b"".join(p.encoded for p in packets) == block
    assert all(p.header[0] & 0xC0 == 0xC0 for p in packets)  # new-format headers
    (entry,) = parse_keyring(block)
    assert entry.key == public_key(private_key, KEY_CREATED)
    assert entry.user_ids == (USER_ID.encode(),)
    ((uid, certification),) = entry.certifications
    assert uid == USER_ID.encode() and certification.sig_type == 0x13
    assert [s.type for s in certification.hashed] == [2, KEY_FLAGS, ISSUER_FINGERPRINT]
    assert certification.key_flags == 0x03 and certification.created == KEY_CREATED
    assert certification.issuer_fingerprint == entry.key.fingerprint
    assert [s.type for s in certification.unhashed] == [16]
    assert certification.issuer_key_id == entry.key.key_id
    result = verify_self_certification(entry, USER_ID.encode())
    assert result.ok and result.fingerprint == entry.key.fingerprint
    assert not verify_self_certification(entry, b"someone else").ok


def test_self_certification_binds_key_and_user_id() -> None:
    block = public_key_block(ED_KEY, USER_ID, KEY_CREATED)
    key_packet, _, certification = parse_packets(block)
    forged = key_packet.encoded + encode_packet(USER_ID_PACKET, b"Mallory") + certification.encoded
    (entry,) = parse_keyring(forged)
    result = verify_self_certification(entry, b"Mallory")
    assert not result.ok and "hash prefix" in result.reason


def test_keyring_grouping() -> None:
    ours = public_key_block(ED_KEY, USER_ID, KEY_CREATED)
    other = public_key_block(OTHER_KEY, "Other", KEY_CREATED)
    subkey = encode_packet(PUBLIC_SUBKEY_PACKET, public_key(RSA_KEY, KEY_CREATED).body)
    v5_key = encode_packet(PUBLIC_KEY_PACKET, b"\x05" + bytes(20))
    keyring = encode_packet(TRUST_PACKET, b"x") + ours + subkey + v5_key + b"\xcd\x01?" + other
    first, second = parse_keyring(keyring)
    assert first.key == public_key(ED_KEY, KEY_CREATED)
    assert first.subkeys == (public_key(RSA_KEY, KEY_CREATED),)
    assert second.user_ids == (b"Other",) and second.key == public_key(OTHER_KEY, KEY_CREATED)
    with pytest.raises(OpenPgpError, match="public key packet must come first") as caught:
        parse_keyring(encode_packet(USER_ID_PACKET, b"x") + ours)
    assert caught.value.offset == 0


# --- Detached signatures ------------------------------------------------------------------


def test_signature_round_trip(private_key: PrivateKey) -> None:
    keyring, signature = _signed(private_key)
    (packet,) = parse_packets(signature)
    parsed = parse_signature(packet)
    key = public_key(private_key, KEY_CREATED)
    assert (parsed.sig_type, parsed.hash_algorithm, parsed.created) == (0, 8, SIGNED)
    assert parsed.algorithm == key.algorithm
    assert [s.type for s in parsed.hashed] == [2, ISSUER_FINGERPRINT]
    assert parsed.issuer_fingerprint == key.fingerprint and parsed.issuer_key_id == key.key_id
    assert len(parsed.mpis) == (1 if key.algorithm == RSA else 2)
    trailer = b"\x04\xff" + len(parsed.hashed_area).to_bytes(4, "big")
    digest = hashlib.sha256(DATA + parsed.hashed_area + trailer).digest()
    assert parsed.left16 == digest[:2]
    result = verify_detached(signature, DATA, keyring)
    assert result.ok, result.reason
    assert (result.fingerprint, result.created) == (key.fingerprint, SIGNED)


def test_ed25519_signatures_are_deterministic() -> None:
    assert _signed(ED_KEY) == _signed(ED_KEY)


def test_modified_data_is_rejected(private_key: PrivateKey) -> None:
    keyring, signature = _signed(private_key)
    for data in (DATA[:-1], DATA + b"\n", DATA.replace(b"0e9a", b"0e9b"), b""):
        result = verify_detached(signature, data, keyring)
        assert not result.ok and "hash prefix" in result.reason


def test_other_key_is_rejected(private_key: PrivateKey) -> None:
    _, signature = _signed(private_key)
    other = public_key_block(OTHER_KEY, "Other", KEY_CREATED)
    result = verify_detached(signature, DATA, other)
    assert not result.ok and "in keyring" in result.reason
    assert not verify_detached(signature, DATA, b"").ok


def _with_hashed_area(signature: bytes, hashed_area: bytes, data: bytes) -> bytes:
    """The signature with another hashed area and a matching hash prefix: only the public-key
    signature itself can then tell that something changed."""
    body = parse_packets(signature)[0].body
    rest = body[6 + int.from_bytes(body[4:6], "big") :]  # unhashed area, hash prefix, MPIs
    unhashed_end = 2 + int.from_bytes(rest[:2], "big")
    trailer = b"\x04\xff" + len(hashed_area).to_bytes(4, "big")
    left16 = hashlib.sha256(data + hashed_area + trailer).digest()[:2]
    body = hashed_area + rest[:unhashed_end] + left16 + rest[unhashed_end + 2 :]
    return encode_packet(SIGNATURE_PACKET, body)


def test_modified_signature_is_rejected(private_key: PrivateKey) -> None:
    keyring, signature = _signed(private_key)
    parsed = parse_signature(parse_packets(signature)[0])
    later = parsed.hashed_area.replace(SIGNED.to_bytes(4, "big"), (SIGNED + 1).to_bytes(4, "big"))
    forged = _with_hashed_area(signature, later, DATA)
    assert parse_signature(parse_packets(forged)[0]).created == SIGNED + 1
    result = verify_detached(forged, DATA, keyring)
    assert not result.ok and "does not verify" in result.reason
    flipped = bytearray(signature)
    flipped[-5] ^= 0x01  # inside the last MPI
    result = verify_detached(bytes(flipped), DATA, keyring)
    assert not result.ok and "does not verify" in result.reason
    prefix = bytearray(signature)
    prefix[len(signature) - len(parsed.material) - 1] ^= 0x01  # the hash prefix itself
    assert "hash prefix" in verify_detached(bytes(prefix), DATA, keyring).reason


def test_every_signature_must_verify() -> None:
    keyring, ours = _signed(ED_KEY)
    other = sign_detached(DATA, OTHER_KEY, SIGNED, public_key(OTHER_KEY, KEY_CREATED))
    both = keyring + public_key_block(OTHER_KEY, "Other", KEY_CREATED)
    assert verify_detached(ours + other, DATA, both).ok
    assert not verify_detached(ours + other, DATA, keyring).ok
    assert verify_detached(b"\xca\x03PGP" + ours, DATA, keyring).ok  # marker packet
    result = verify_detached(ours + encode_packet(USER_ID_PACKET, b"x"), DATA, keyring)
    assert not result.ok and "not a detached signature" in result.reason
    assert verify_detached(b"", DATA, keyring).reason == "no signature packet"
    v3 = encode_packet(SIGNATURE_PACKET, b"\x03" + bytes(20))
    assert "version 3" in verify_detached(v3, DATA, keyring).reason


def _custom(sig_type: int, extra: bytes = b"", created: int = SIGNED) -> bytes:
    key = public_key(ED_KEY, KEY_CREATED)
    return _make_signature(ED_KEY, key, sig_type, created, extra, DATA)


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        (_custom(0x01), "is not binary"),
        (_custom(BINARY_DOCUMENT, _subpacket(0x83, bytes(4))), "unknown critical subpacket 3"),
        (_custom(BINARY_DOCUMENT, created=KEY_CREATED - 1), "older than its key"),
    ],
)
def test_rejected_signatures(signature: bytes, reason: str) -> None:
    keyring = public_key_block(ED_KEY, USER_ID, KEY_CREATED)
    result = verify_detached(signature, DATA, keyring)
    assert not result.ok and reason in result.reason


def test_non_critical_unknown_subpackets_are_ignored() -> None:
    keyring = public_key_block(ED_KEY, USER_ID, KEY_CREATED)
    assert verify_detached(_custom(0, _subpacket(100, b"x")), DATA, keyring).ok


def test_revoked_key_is_rejected() -> None:
    key = public_key(ED_KEY, KEY_CREATED)
    revocation = _make_signature(ED_KEY, key, KEY_REVOCATION, SIGNED, b"", _key_prefix(key))
    keyring, signature = _signed(ED_KEY)
    packets = parse_packets(keyring)
    revoked = packets[0].encoded + revocation + b"".join(p.encoded for p in packets[1:])
    assert parse_keyring(revoked)[0].direct[0].sig_type == KEY_REVOCATION
    result = verify_detached(signature, DATA, revoked)
    assert not result.ok and "revoked" in result.reason
    # A revocation that does not verify does not count.
    bad = revocation[:-3] + bytes([revocation[-3] ^ 1]) + revocation[-2:]
    still_valid = packets[0].encoded + bad + b"".join(p.encoded for p in packets[1:])
    assert verify_detached(signature, DATA, still_valid).ok


def test_signature_by_subkey_is_reported() -> None:
    sub = public_key(OTHER_KEY, KEY_CREATED)
    keyring = public_key_block(ED_KEY, USER_ID, KEY_CREATED)
    keyring += encode_packet(PUBLIC_SUBKEY_PACKET, sub.body)
    signature = sign_detached(DATA, OTHER_KEY, SIGNED, sub)
    assert "subkey" in verify_detached(signature, DATA, keyring).reason


def test_signing_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="does not belong"):
        sign_detached(DATA, RSA_KEY, SIGNED, public_key(ED_KEY, KEY_CREATED))
    with pytest.raises(ValueError, match="older than its key"):
        sign_detached(DATA, ED_KEY, KEY_CREATED - 1, public_key(ED_KEY, KEY_CREATED))


def test_armor() -> None:
    _, signature = _signed(ED_KEY)
    text = armor(signature).decode()
    lines = text.splitlines()
    assert lines[0] == "-----BEGIN PGP SIGNATURE-----" and lines[1] == ""
    assert lines[-1] == "-----END PGP SIGNATURE-----" and lines[-2].startswith("=")
    assert base64.b64decode("".join(lines[2:-2])) == signature
    # CRC-24 of an empty input is the initial value (RFC 4880 6.1).
    assert armor(b"", "PUBLIC KEY BLOCK").splitlines()[-2] == b"=twTO"


# --- Malformed input ----------------------------------------------------------------------

KEYRING, SIGNATURE = _signed(ED_KEY)
RSA_KEYRING, RSA_SIGNATURE = _signed(RSA_KEY)


def _mutate(data: bytes, mutations: list[tuple[int, int]]) -> bytes:
    mutated = bytearray(data)
    for offset, value in mutations:
        mutated[offset % len(mutated)] = value
    return bytes(mutated)


MUTATIONS = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=4)


@settings(max_examples=400)
@given(MUTATIONS, MUTATIONS, st.booleans())
def test_mutated_signatures_and_keyrings(
    signature_mutations: list[tuple[int, int]],
    keyring_mutations: list[tuple[int, int]],
    use_rsa: bool,
) -> None:
    keyring, signature = (RSA_KEYRING, RSA_SIGNATURE) if use_rsa else (KEYRING, SIGNATURE)
    mutated_signature = _mutate(signature, signature_mutations)
    mutated_keyring = _mutate(keyring, keyring_mutations)
    try:
        result = verify_detached(mutated_signature, DATA, mutated_keyring)
    except OpenPgpError:
        return
    if result.ok:
        # Only changes that the signature does not cover can leave it valid.
        assert parse_keyring(mutated_keyring)[0].key == parse_keyring(keyring)[0].key


@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    with contextlib.suppress(OpenPgpError):
        parse_packets(data)
    with contextlib.suppress(OpenPgpError):
        parse_keyring(data)
    with contextlib.suppress(OpenPgpError):
        assert not verify_detached(data, DATA, KEYRING).ok
    with contextlib.suppress(OpenPgpError):
        verify_detached(SIGNATURE, DATA, data)


@given(st.sampled_from([2, 6, 14]), st.integers(0, 255), st.integers(0, 255), st.binary())
def test_random_packet_bodies(tag: int, version: int, algorithm: int, rest: bytes) -> None:
    body = bytes([version]) + rest[:4] + bytes([algorithm]) + rest[4:]
    if tag == 2:
        body = bytes([4, rest[0] if rest else 0, algorithm]) + rest[1:]
    packet = Packet(tag, body, b"", 0)
    with contextlib.suppress(OpenPgpError):
        if tag == SIGNATURE_PACKET:
            parse_signature(packet)
        else:
            parse_public_key(packet)
    data = encode_packet(tag, body)
    with contextlib.suppress(OpenPgpError):
        verify_detached(data if tag == 2 else SIGNATURE, DATA, KEYRING if tag == 2 else data)
