"""TPM2_MakeCredential in software, as a verifier does it (TPM 2.0 Part 1 §24, Part 3 §12.6).

The verifier knows a TPM's endorsement key (EK) and the name of an attestation key (AK) that
the node says lives on that TPM. It wraps a secret so that only that TPM can unwrap it, and
only for a loaded object with exactly that name (TPM2_ActivateCredential):

- a random `seed` is protected to the EK: RSA-OAEP with the label "IDENTITY\\0" (RSA EK), or
  an ephemeral ECDH key whose shared secret goes through KDFe with "IDENTITY" (ECC EK);
- symKey = KDFa(nameAlg, seed, "STORAGE", AK name, "", EK symmetric key bits);
  encIdentity = AES-CFB(symKey, IV 0, TPM2B_DIGEST(secret));
- hmacKey = KDFa(nameAlg, seed, "INTEGRITY", "", "", digest bits);
  outerHMAC = HMAC(hmacKey, encIdentity || AK name).

The credential blob is TPM2B_ID_OBJECT (TPM2B_DIGEST outerHMAC || encIdentity), the protected
seed TPM2B_ENCRYPTED_SECRET. `activate_credential` is the TPM's side, for an EK private key we
hold (tests). tpm2-tools frames both in one file (`tpm2_makecredential -o`,
`tpm2_activatecredential -i`): magic 0xBADCC0DE, version 1, then the two structures.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:  # CFB moved to the "decrepit" module (cryptography 47); the TPM still needs it.
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB  # type: ignore[assignment,unused-ignore]

from ultraviolet.formats._reader import Bytes, Reader
from ultraviolet.formats.tpm import (
    ALG_ECC,
    ALG_RSA,
    ECC_CURVES,
    HASH_ALGORITHMS,
    EccParameters,
    PublicArea,
    RsaParameters,
    TpmError,
)

ALG_AES = 0x0006
ALG_CFB = 0x0043
IDENTITY_LABEL = b"IDENTITY\0"
CREDENTIAL_FILE_MAGIC = 0xBADCC0DE
CREDENTIAL_FILE_VERSION = 1


class CredentialError(TpmError):
    """A credential that cannot be made for this key, or a blob that does not parse or verify."""


@dataclass(frozen=True)
class IdObject:
    """TPM2B_ID_OBJECT contents: the integrity HMAC and the encrypted TPM2B_DIGEST credential."""

    integrity_hmac: bytes
    enc_identity: bytes

    def to_2b(self) -> bytes:
        body = _pack_2b("integrityHMAC", self.integrity_hmac) + self.enc_identity
        return _pack_2b("TPM2B_ID_OBJECT", body)


# Key derivation (Part 1 §11.4.10).


def _hash_of(name_alg: int) -> type[hashes.HashAlgorithm]:
    known = HASH_ALGORITHMS.get(name_alg)
    if known is None:
        raise CredentialError("EK public area", f"nameAlg 0x{name_alg:04x} is not a known hash")
    return known[2]


def _nul_terminated(label: bytes) -> bytes:
    return label if label.endswith(b"\0") else label + b"\0"


def kdf_a(
    name_alg: int, key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int
) -> bytes:
    """KDFa: SP 800-108 counter-mode HMAC KDF as the TPM specifies it."""
    algorithm = _hash_of(name_alg)
    out = b""
    counter = 0
    while len(out) * 8 < bits:
        counter += 1
        mac = hmac.HMAC(key, algorithm())
        mac.update(struct.pack(">I", counter) + _nul_terminated(label) + context_u + context_v)
        mac.update(struct.pack(">I", bits))
        out += mac.finalize()
    return _truncate_bits(out, bits)


def kdf_e(
    name_alg: int, z: bytes, label: bytes, party_u: bytes, party_v: bytes, bits: int
) -> bytes:
    """KDFe: SP 800-56A concatenation KDF over the ECDH shared secret Z."""
    algorithm = _hash_of(name_alg)
    out = b""
    counter = 0
    while len(out) * 8 < bits:
        counter += 1
        hasher = hashes.Hash(algorithm())
        hasher.update(struct.pack(">I", counter) + z + _nul_terminated(label) + party_u + party_v)
        out += hasher.finalize()
    return _truncate_bits(out, bits)


def _truncate_bits(data: bytes, bits: int) -> bytes:
    data = data[: (bits + 7) // 8]
    if bits % 8:  # the TPM masks the leading byte's surplus high bits
        data = bytes([data[0] & (0xFF >> (8 - bits % 8))]) + data[1:]
    return data


# Seed protection to the EK.


def _symmetric_bits(ek_public: PublicArea) -> int:
    symmetric = ek_public.parameters.symmetric
    if symmetric.algorithm != ALG_AES or symmetric.mode != ALG_CFB:
        raise CredentialError(
            "EK public area",
            f"symmetric 0x{symmetric.algorithm:04x}/0x{symmetric.mode:04x} is not AES-CFB: "
            "not a storage key that can activate credentials",
        )
    if symmetric.key_bits not in (128, 192, 256):
        raise CredentialError("EK public area", f"AES key of {symmetric.key_bits} bits")
    return symmetric.key_bits


def _digest_size(name_alg: int) -> int:
    _hash_of(name_alg)
    return HASH_ALGORITHMS[name_alg][1]


def _protect_seed_rsa(ek_public: PublicArea, seed: bytes) -> bytes:
    key = ek_public.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    algorithm = _hash_of(ek_public.name_alg)
    oaep = padding.OAEP(mgf=padding.MGF1(algorithm()), algorithm=algorithm(), label=IDENTITY_LABEL)
    return key.encrypt(seed, oaep)


def _ecc_seed(ek_public: PublicArea, ephemeral: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    """(seed, TPMS_ECC_POINT of the ephemeral key) for an ECC EK."""
    parameters = ek_public.parameters
    assert isinstance(parameters, EccParameters)
    size = ECC_CURVES[parameters.curve][1]
    ek_key = ek_public.public_key()
    assert isinstance(ek_key, ec.EllipticCurvePublicKey)
    if not isinstance(ephemeral.curve, type(ek_key.curve)):
        raise CredentialError("ECC seed", "the ephemeral key is not on the EK's curve")
    z = ephemeral.exchange(ec.ECDH(), ek_key)
    numbers = ephemeral.public_key().public_numbers()
    eph_x, eph_y = numbers.x.to_bytes(size), numbers.y.to_bytes(size)
    ek_x = parameters.x.rjust(size, b"\0")
    bits = 8 * _digest_size(ek_public.name_alg)
    seed = kdf_e(ek_public.name_alg, z, b"IDENTITY", eph_x, ek_x, bits)
    return seed, _pack_2b("ECC x", eph_x) + _pack_2b("ECC y", eph_y)


# The credential.


def wrap_credential(
    name_alg: int, symmetric_bits: int, seed: bytes, ak_name: bytes, secret: bytes
) -> IdObject:
    """The TPM2B_ID_OBJECT contents for a given seed (deterministic)."""
    digest_size = _digest_size(name_alg)
    if not 0 < len(secret) <= digest_size:
        raise CredentialError(
            "credential", f"{len(secret)} bytes; 1 to {digest_size} (the EK's nameAlg digest)"
        )
    sym_key = kdf_a(name_alg, seed, b"STORAGE", ak_name, b"", symmetric_bits)
    plain = _pack_2b("credential", secret)
    encryptor = Cipher(algorithms.AES(sym_key), CFB(bytes(16))).encryptor()
    enc_identity = encryptor.update(plain) + encryptor.finalize()
    integrity = _integrity_hmac(name_alg, seed, enc_identity, ak_name).finalize()
    return IdObject(integrity, enc_identity)


def make_credential(
    ek_public: PublicArea,
    ak_name: bytes,
    secret: bytes,
    *,
    seed: bytes | None = None,
    ephemeral: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[bytes, bytes]:
    """(TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET) that the TPM holding `ek_public` turns back
    into `secret` only with the object named `ak_name` loaded. `seed` (RSA) or `ephemeral`
    (ECC) fix the randomness, for tests."""
    if len(ak_name) < 2 or int.from_bytes(ak_name[:2]) not in HASH_ALGORITHMS:
        raise CredentialError("AK name", "not a TPM2B_NAME of a key (nameAlg || digest)")
    if _digest_size(int.from_bytes(ak_name[:2])) != len(ak_name) - 2:
        raise CredentialError("AK name", f"{len(ak_name) - 2}-byte digest for its nameAlg")
    bits = _symmetric_bits(ek_public)
    if ek_public.type == ALG_RSA and isinstance(ek_public.parameters, RsaParameters):
        if ephemeral is not None:
            raise CredentialError("credential", "an ephemeral key for an RSA EK")
        if seed is None:
            seed = secrets.token_bytes(_digest_size(ek_public.name_alg))
        encrypted = _protect_seed_rsa(ek_public, seed)
    elif ek_public.type == ALG_ECC and isinstance(ek_public.parameters, EccParameters):
        if seed is not None:
            raise CredentialError("credential", "an ECC EK's seed comes from ECDH, not the caller")
        if ek_public.parameters.curve not in ECC_CURVES:
            raise CredentialError("EK public area", "unsupported ECC curve")
        curve = ECC_CURVES[ek_public.parameters.curve][0]
        seed, encrypted = _ecc_seed(ek_public, ephemeral or ec.generate_private_key(curve()))
    else:
        raise CredentialError("EK public area", f"key type 0x{ek_public.type:04x}")
    blob = wrap_credential(ek_public.name_alg, bits, seed, ak_name, secret)
    return blob.to_2b(), _pack_2b("TPM2B_ENCRYPTED_SECRET", encrypted)


def _integrity_hmac(name_alg: int, seed: bytes, enc_identity: bytes, ak_name: bytes) -> hmac.HMAC:
    hmac_key = kdf_a(name_alg, seed, b"INTEGRITY", b"", b"", 8 * _digest_size(name_alg))
    mac = hmac.HMAC(hmac_key, _hash_of(name_alg)())
    mac.update(enc_identity + ak_name)
    return mac


# The TPM's side, for a private EK we hold.


def recover_seed(
    ek_private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    ek_public: PublicArea,
    encrypted_secret: Bytes,
) -> bytes:
    """The seed inside a TPM2B_ENCRYPTED_SECRET, decrypted with the EK's private key."""
    r = Reader(encrypted_secret, "TPM2B_ENCRYPTED_SECRET", CredentialError)
    body = r.read(r.unpack(">H")[0])
    _finish(r)
    if isinstance(ek_private, rsa.RSAPrivateKey):
        algorithm = _hash_of(ek_public.name_alg)
        oaep = padding.OAEP(
            mgf=padding.MGF1(algorithm()), algorithm=algorithm(), label=IDENTITY_LABEL
        )
        try:
            return ek_private.decrypt(body, oaep)
        except ValueError as exc:
            raise CredentialError("TPM2B_ENCRYPTED_SECRET", "OAEP decryption failed") from exc
    parameters = ek_public.parameters
    if not isinstance(parameters, EccParameters) or parameters.curve not in ECC_CURVES:
        raise CredentialError("EK public area", "an ECC private key for a non-ECC EK")
    curve, size = ECC_CURVES[parameters.curve]
    point = Reader(body, "TPMS_ECC_POINT", CredentialError, base=2)
    x, y = point.read(point.unpack(">H")[0]), point.read(point.unpack(">H")[0])
    _finish(point)
    try:
        encoded = b"\x04" + x.rjust(size, b"\0") + y.rjust(size, b"\0")
        ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(curve(), encoded)
    except ValueError as exc:
        raise CredentialError("TPMS_ECC_POINT", f"not a point on the EK's curve: {exc}") from exc
    z = ek_private.exchange(ec.ECDH(), ephemeral)
    bits = 8 * _digest_size(ek_public.name_alg)
    return kdf_e(
        ek_public.name_alg,
        z,
        b"IDENTITY",
        x.rjust(size, b"\0"),
        parameters.x.rjust(size, b"\0"),
        bits,
    )


def activate_credential(
    ek_private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    ek_public: PublicArea,
    ak_name: bytes,
    credential_blob: Bytes,
    encrypted_secret: Bytes,
) -> bytes:
    """TPM2_ActivateCredential in software: the secret, if the blob is intact and for `ak_name`."""
    seed = recover_seed(ek_private, ek_public, encrypted_secret)
    blob = parse_id_object(credential_blob)
    mac = _integrity_hmac(ek_public.name_alg, seed, blob.enc_identity, ak_name)
    try:
        mac.verify(blob.integrity_hmac)
    except InvalidSignature:
        raise CredentialError(
            "TPM2B_ID_OBJECT", "integrity HMAC mismatch (wrong EK, AK name or blob)"
        ) from None
    sym_key = kdf_a(ek_public.name_alg, seed, b"STORAGE", ak_name, b"", _symmetric_bits(ek_public))
    decryptor = Cipher(algorithms.AES(sym_key), CFB(bytes(16))).decryptor()
    plain = decryptor.update(blob.enc_identity) + decryptor.finalize()
    r = Reader(plain, "encIdentity", CredentialError)
    secret = r.read(r.unpack(">H")[0])
    _finish(r)
    return secret


# Parsing and the tpm2-tools file.


def _pack_2b(what: str, data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise CredentialError(what, f"{len(data)} bytes do not fit a TPM2B")
    return struct.pack(">H", len(data)) + data


def _finish(r: Reader) -> None:
    if r.remaining:
        r.fail(f"{r.remaining} bytes after the end of the structure")


def parse_id_object(data: Bytes) -> IdObject:
    """TPM2B_ID_OBJECT."""
    r = Reader(data, "TPM2B_ID_OBJECT", CredentialError)
    size = r.unpack(">H")[0]
    r.require(size)
    hmac_size = r.unpack(">H")[0]
    if hmac_size > size - 2:
        r.fail(f"integrityHMAC of {hmac_size} bytes in a {size}-byte object", r.pos - 2)
    integrity = r.read(hmac_size)
    enc_identity = r.read(size - 2 - hmac_size)
    _finish(r)
    return IdObject(integrity, enc_identity)


def credential_file(credential_blob: bytes, encrypted_secret: bytes) -> bytes:
    """The tpm2-tools credential file (tpm2_makecredential -o, tpm2_activatecredential -i)."""
    parse_id_object(credential_blob)
    _split_2b(encrypted_secret, "TPM2B_ENCRYPTED_SECRET", 0)
    head = struct.pack(">II", CREDENTIAL_FILE_MAGIC, CREDENTIAL_FILE_VERSION)
    return head + credential_blob + encrypted_secret


def _split_2b(data: Bytes, structure: str, base: int) -> tuple[bytes, int]:
    r = Reader(data, structure, CredentialError, base=base)
    size = r.unpack(">H")[0]
    r.require(size)
    return bytes(r.data[: 2 + size]), 2 + size


def parse_credential_file(data: Bytes) -> tuple[bytes, bytes]:
    """(TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET) from a tpm2-tools credential file."""
    r = Reader(data, "tpm2-tools credential file", CredentialError)
    magic, version = r.unpack(">II")
    if magic != CREDENTIAL_FILE_MAGIC:
        r.fail(f"magic 0x{magic:08x}, not 0x{CREDENTIAL_FILE_MAGIC:08x}", 0)
    if version != CREDENTIAL_FILE_VERSION:
        r.fail(f"version {version}, not {CREDENTIAL_FILE_VERSION}", 4)
    blob, used = _split_2b(r.data[8:], "TPM2B_ID_OBJECT", 8)
    parse_id_object(blob)
    secret, used_secret = _split_2b(r.data[8 + used :], "TPM2B_ENCRYPTED_SECRET", 8 + used)
    r.seek(8 + used + used_secret)
    _finish(r)
    return blob, secret
