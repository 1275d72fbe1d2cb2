"""TPMT_PUBLIC / TPM2B_PUBLIC (attestation and endorsement keys, their names) and the check of a
TPMT_SIGNATURE by such a key (TPM 2.0 Library, Part 2). Importable from formats.tpm.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ultraviolet.formats._reader import Bytes, Reader
from ultraviolet.formats.tpm_structures import (
    ALG_ECC,
    ALG_ECDAA,
    ALG_ECDSA,
    ALG_NULL,
    ALG_RSA,
    ALG_RSAES,
    ALG_RSAPSS,
    ALG_RSASSA,
    ECC_CURVES,
    HASH_ALGORITHMS,
    OBJECT_ATTRIBUTES,
    Quote,
    QuoteVerificationError,
    Signature,
    TpmError,
    _finish,
    _pack,
    _pack_tpm2b,
    _tpm2b,
    _u16,
    digest,
    hash_name,
    parse_quote,
)

_PKCS1V15 = padding.PKCS1v15()

# TPMT_PUBLIC.


@dataclass(frozen=True)
class SymmetricDefinition:
    """TPMT_SYM_DEF_OBJECT: NULL for signing keys, e.g. AES-128-CFB for storage keys."""

    algorithm: int = ALG_NULL
    key_bits: int = 0
    mode: int = 0

    def to_bytes(self) -> bytes:
        if self.algorithm == ALG_NULL:
            return _pack("TPMT_SYM_DEF_OBJECT", ">H", ALG_NULL)
        return _pack("TPMT_SYM_DEF_OBJECT", ">HHH", self.algorithm, self.key_bits, self.mode)


@dataclass(frozen=True)
class Scheme:
    """TPMT_RSA_SCHEME / TPMT_ECC_SCHEME / TPMT_KDF_SCHEME: a scheme and its hash (and, for
    ECDAA, a count). NULL and RSAES carry no details."""

    scheme: int = ALG_NULL
    hash_alg: int = 0
    count: int = 0

    def to_bytes(self) -> bytes:
        if self.scheme in (ALG_NULL, ALG_RSAES):
            return _pack("scheme", ">H", self.scheme)
        if self.scheme == ALG_ECDAA:
            return _pack("scheme", ">HHH", self.scheme, self.hash_alg, self.count)
        return _pack("scheme", ">HH", self.scheme, self.hash_alg)


@dataclass(frozen=True)
class RsaParameters:
    symmetric: SymmetricDefinition
    scheme: Scheme
    key_bits: int
    exponent: int  # 0 means the default, 65537
    modulus: bytes

    def to_bytes(self) -> bytes:
        sizes = _pack("TPMS_RSA_PARMS", ">HI", self.key_bits, self.exponent)
        modulus = _pack_tpm2b("TPM2B_PUBLIC_KEY_RSA", self.modulus)
        return self.symmetric.to_bytes() + self.scheme.to_bytes() + sizes + modulus


@dataclass(frozen=True)
class EccParameters:
    symmetric: SymmetricDefinition
    scheme: Scheme
    curve: int
    kdf: Scheme
    x: bytes
    y: bytes

    def to_bytes(self) -> bytes:
        curve = _pack("TPMS_ECC_PARMS", ">H", self.curve) + self.kdf.to_bytes()
        point = _pack_tpm2b("TPMS_ECC_POINT", self.x) + _pack_tpm2b("TPMS_ECC_POINT", self.y)
        return self.symmetric.to_bytes() + self.scheme.to_bytes() + curve + point


@dataclass(frozen=True)
class PublicArea:
    """TPMT_PUBLIC of an RSA or ECC key."""

    type: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    parameters: RsaParameters | EccParameters

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return tuple(name for bit, name in OBJECT_ATTRIBUTES.items() if self.attributes >> bit & 1)

    def to_bytes(self) -> bytes:
        head = _pack("TPMT_PUBLIC", ">HHI", self.type, self.name_alg, self.attributes)
        policy = _pack_tpm2b("TPMT_PUBLIC authPolicy", self.auth_policy)
        return head + policy + self.parameters.to_bytes()

    def to_2b(self) -> bytes:
        return _pack_tpm2b("TPM2B_PUBLIC", self.to_bytes())

    def name(self) -> bytes:
        """nameAlg || H_nameAlg(TPMT_PUBLIC): how the TPM names this key."""
        if self.name_alg not in HASH_ALGORITHMS:
            raise TpmError("TPMT_PUBLIC", f"nameAlg 0x{self.name_alg:04x} cannot name a key")
        algorithm = _pack("TPM2B_NAME", ">H", self.name_alg)
        return algorithm + digest(hash_name(self.name_alg), self.to_bytes())

    def public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        if isinstance(self.parameters, RsaParameters):
            return _rsa_key(self.parameters)
        return _ecc_key(self.parameters)


def _rsa_key(parameters: RsaParameters) -> rsa.RSAPublicKey:
    if len(parameters.modulus) * 8 != parameters.key_bits:
        raise TpmError(
            "TPMT_PUBLIC",
            f"a {parameters.key_bits}-bit key with a {len(parameters.modulus)}-byte modulus",
        )
    return _rsa_public_key(parameters.exponent or 65537, parameters.modulus)


@functools.lru_cache(maxsize=4096)
def _rsa_public_key(exponent: int, modulus: bytes) -> rsa.RSAPublicKey:
    # A verifier checks the quotes of the same enrolled AKs over and over: making the key
    # object (and OpenSSL's checks of it) once per AK is a tenth of a quote's verification.
    try:
        return rsa.RSAPublicNumbers(exponent, int.from_bytes(modulus)).public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TpmError("TPMT_PUBLIC", f"not a usable RSA key: {exc}") from exc


def _ecc_key(parameters: EccParameters) -> ec.EllipticCurvePublicKey:
    known = ECC_CURVES.get(parameters.curve)
    if known is None:
        raise TpmError("TPMT_PUBLIC", f"unsupported ECC curve 0x{parameters.curve:04x}")
    curve, size = known
    if len(parameters.x) > size or len(parameters.y) > size:
        raise TpmError("TPMT_PUBLIC", f"ECC coordinates longer than {size} bytes")
    point = b"\x04" + parameters.x.rjust(size, b"\0") + parameters.y.rjust(size, b"\0")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve(), point)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TpmError("TPMT_PUBLIC", f"not a point on {curve.name}: {exc}") from exc


def _read_symmetric(r: Reader) -> SymmetricDefinition:
    algorithm = _u16(r)
    if algorithm == ALG_NULL:
        return SymmetricDefinition()
    key_bits, mode = r.unpack(">HH")
    return SymmetricDefinition(algorithm, key_bits, mode)


def _read_scheme(r: Reader) -> Scheme:
    scheme = _u16(r)
    if scheme in (ALG_NULL, ALG_RSAES):
        return Scheme(scheme)
    if scheme == ALG_ECDAA:
        hash_alg, count = r.unpack(">HH")
        return Scheme(scheme, hash_alg, count)
    return Scheme(scheme, _u16(r))


def _read_public(r: Reader) -> PublicArea:
    start = r.pos
    kind, name_alg, attributes = r.unpack(">HHI")
    policy = _tpm2b(r)
    parameters: RsaParameters | EccParameters
    if kind == ALG_RSA:
        symmetric, scheme = _read_symmetric(r), _read_scheme(r)
        key_bits, exponent = r.unpack(">HI")
        parameters = RsaParameters(symmetric, scheme, key_bits, exponent, _tpm2b(r))
    elif kind == ALG_ECC:
        symmetric, scheme = _read_symmetric(r), _read_scheme(r)
        curve = _u16(r)
        kdf = _read_scheme(r)
        parameters = EccParameters(symmetric, scheme, curve, kdf, _tpm2b(r), _tpm2b(r))
    else:
        r.fail(f"unsupported key type 0x{kind:04x} (RSA 0x0001, ECC 0x0023)", start)
    return PublicArea(kind, name_alg, attributes, policy, parameters)


def parse_public(data: Bytes) -> PublicArea:
    """TPMT_PUBLIC (no size prefix)."""
    r = Reader(data, "TPMT_PUBLIC", TpmError)
    public = _read_public(r)
    _finish(r)
    return public


def parse_public_2b(data: Bytes) -> PublicArea:
    """TPM2B_PUBLIC, as tpm2_create -u and tpm2_readpublic -o write it."""
    r = Reader(data, "TPM2B_PUBLIC", TpmError)
    inner = _tpm2b(r)
    _finish(r)
    r = Reader(inner, "TPMT_PUBLIC", TpmError, base=2)
    public = _read_public(r)
    _finish(r)
    return public


def qualified_name(parent_qualified_name: bytes, name: bytes) -> bytes:
    """QN(object) = nameAlg || H_nameAlg(QN(parent) || Name(object)) (Part 1, 16.6)."""
    if len(name) < 2:
        raise TpmError("TPM2B_NAME", "a name is at least the 2-byte name algorithm")
    name_alg = int.from_bytes(name[:2])
    return name[:2] + digest(hash_name(name_alg), parent_qualified_name + name)


# Verification.


@functools.lru_cache(maxsize=16)
def _hash_object(hash_alg: int) -> hashes.HashAlgorithm:
    """The pyca hash of a TPM_ALG_ID (immutable: made once, not per signature)."""
    return HASH_ALGORITHMS[hash_alg][2]()


def verify_signature(message: bytes, signature: Signature, public: PublicArea) -> None:
    """Check `signature` over `message` with `public`; QuoteVerificationError if it fails."""
    key = public.public_key()
    scheme = public.parameters.scheme
    signed = (signature.scheme, signature.hash_alg)
    # A restricted key's TPM signs only with the key's scheme; a NULL scheme allows any.
    if scheme.scheme != ALG_NULL and signed != (scheme.scheme, scheme.hash_alg):
        raise QuoteVerificationError(
            f"signature scheme 0x{signature.scheme:04x}/{hash_name(signature.hash_alg)} is not "
            f"the key's 0x{scheme.scheme:04x}/{hash_name(scheme.hash_alg)}"
        )
    if signature.hash_alg not in HASH_ALGORITHMS:
        raise TpmError("TPMT_SIGNATURE", f"unknown hash algorithm 0x{signature.hash_alg:04x}")
    chosen = _hash_object(signature.hash_alg)
    try:
        if isinstance(key, rsa.RSAPublicKey) and signature.scheme == ALG_RSASSA:
            key.verify(signature.rsa, message, _PKCS1V15, chosen)
        elif isinstance(key, rsa.RSAPublicKey) and signature.scheme == ALG_RSAPSS:
            # TPMs pick the salt length (digest size or maximum): accept what the signature has.
            pss = padding.PSS(mgf=padding.MGF1(chosen), salt_length=padding.PSS.AUTO)
            key.verify(signature.rsa, message, pss, chosen)
        elif isinstance(key, ec.EllipticCurvePublicKey) and signature.scheme == ALG_ECDSA:
            der = encode_dss_signature(int.from_bytes(signature.r), int.from_bytes(signature.s))
            key.verify(der, message, ec.ECDSA(chosen))
        else:
            raise QuoteVerificationError(
                f"a 0x{signature.scheme:04x} signature cannot come from a "
                f"{'RSA' if isinstance(key, rsa.RSAPublicKey) else 'ECC'} key"
            )
    except InvalidSignature as exc:
        raise QuoteVerificationError("the signature does not verify with the key") from exc
    except UnsupportedAlgorithm as exc:
        raise QuoteVerificationError(f"cannot check this signature here: {exc}") from exc


def verify_quote(
    attest: Bytes,
    signature: Signature,
    public: PublicArea,
    *,
    nonce: bytes | None = None,
    qualified_signer: bytes | None = None,
) -> Quote:
    """Parse a quote (raw TPMS_ATTEST) and check its signature over exactly those bytes by
    `public`; optionally that it carries `nonce` and names `qualified_signer`."""
    quote = parse_quote(attest)
    verify_signature(bytes(attest), signature, public)
    if nonce is not None and quote.nonce != nonce:
        raise QuoteVerificationError(
            f"the quote's nonce {quote.nonce.hex()} is not the expected {nonce.hex()}"
        )
    if qualified_signer is not None and quote.attest.qualified_signer != qualified_signer:
        raise QuoteVerificationError(
            f"the quote is signed by {quote.attest.qualified_signer.hex()}, "
            f"not {qualified_signer.hex()}"
        )
    return quote
