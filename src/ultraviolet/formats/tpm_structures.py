"""TPM 2.0 structures for quote verification (TPM 2.0 Library, Part 2), read and written.

Everything is big-endian. A quote is a TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE signed by an
attestation key (AK): the signature covers the raw TPMS_ATTEST bytes, and its pcrDigest is the
hash, with the *signing scheme's* hash algorithm, of the selected PCR values concatenated in
selection order. qualifiedSigner is the AK's qualified name (chained through its parents), not
its name. Parsed structures are frozen dataclasses whose `to_bytes()` gives back the exact bytes.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ultraviolet.errors import AttestationError, FormatError
from ultraviolet.formats._reader import Bytes, Reader

TPM_GENERATED_VALUE = 0xFF544347  # "\xffTCG": only the TPM itself signs data starting so
ST_ATTEST_QUOTE = 0x8018
_QUOTE_HEAD = bytes.fromhex("ff5443478018")  # magic, type quote
ST_ATTEST_NAMES = {
    0x8014: "nv",
    0x8015: "command-audit",
    0x8016: "session-audit",
    0x8017: "certify",
    0x8018: "quote",
    0x8019: "time",
    0x801A: "creation",
    0x801C: "nv-digest",
}

ALG_RSA = 0x0001
ALG_SHA1 = 0x0004
ALG_SHA256 = 0x000B
ALG_NULL = 0x0010
ALG_RSASSA = 0x0014
ALG_RSAES = 0x0015
ALG_RSAPSS = 0x0016
ALG_ECDSA = 0x0018
ALG_ECDAA = 0x001A
ALG_ECC = 0x0023

# TPM_ALG_ID -> (name as tpm2-tools and our PCR banks spell it, digest size, implementation)
HASH_ALGORITHMS: dict[int, tuple[str, int, type[hashes.HashAlgorithm]]] = {
    0x0004: ("sha1", 20, hashes.SHA1),
    0x000B: ("sha256", 32, hashes.SHA256),
    0x000C: ("sha384", 48, hashes.SHA384),
    0x000D: ("sha512", 64, hashes.SHA512),
    0x0012: ("sm3_256", 32, hashes.SM3),
    0x0027: ("sha3_256", 32, hashes.SHA3_256),
    0x0028: ("sha3_384", 48, hashes.SHA3_384),
    0x0029: ("sha3_512", 64, hashes.SHA3_512),
}
_HASHLIB: dict[str, Callable[[bytes], hashlib._Hash]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
}
_HASH_IDS = {name: alg for alg, (name, _, _) in HASH_ALGORITHMS.items()}
# TPM_ECC_CURVE -> (curve, coordinate size in bytes)
ECC_CURVES: dict[int, tuple[type[ec.EllipticCurve], int]] = {
    0x0001: (ec.SECP192R1, 24),
    0x0002: (ec.SECP224R1, 28),
    0x0003: (ec.SECP256R1, 32),
    0x0004: (ec.SECP384R1, 48),
    0x0005: (ec.SECP521R1, 66),
}

OBJECT_ATTRIBUTES = {
    1: "fixedtpm",
    2: "stclear",
    4: "fixedparent",
    5: "sensitivedataorigin",
    6: "userwithauth",
    7: "adminwithpolicy",
    10: "noda",
    11: "encryptedduplication",
    16: "restricted",
    17: "decrypt",
    18: "sign",
    19: "x509sign",
}
# A hierarchy's name (and qualified name) is its handle: a primary key's QN starts from it.
RH_OWNER = bytes.fromhex("40000001")
RH_ENDORSEMENT = bytes.fromhex("4000000b")

MAX_PCR_SELECTIONS = 16  # one per bank; real TPMs have at most a handful
MAX_SIZE_OF_SELECT = 32  # 256 PCRs, far above any real TPM (3 bytes = 24 PCRs)


class TpmError(FormatError):
    pass


class QuoteVerificationError(AttestationError):
    """A quote whose signature, signer or nonce does not check out."""


# fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign, as tpm2_createak makes
# attestation keys.
AK_ATTRIBUTES = 0x00050072


def hash_name(alg: int) -> str:
    known = HASH_ALGORITHMS.get(alg)
    return known[0] if known else f"alg_0x{alg:04x}"


def hash_id(name: str) -> int:
    if name in _HASH_IDS:
        return _HASH_IDS[name]
    raise TpmError("hash algorithm", f"unknown hash {name!r}; known: {', '.join(_HASH_IDS)}")


def digest(name: str, data: bytes) -> bytes:
    """H_name(data) for a TPM hash algorithm name."""
    stdlib = _HASHLIB.get(name)
    if stdlib is not None:  # the same digest, without a cryptography Hash object per call
        return stdlib(data).digest()
    try:
        hasher = hashes.Hash(HASH_ALGORITHMS[hash_id(name)][2]())
    except UnsupportedAlgorithm as exc:
        raise TpmError("hash algorithm", f"{name} is not available here") from exc
    hasher.update(data)
    return hasher.finalize()


# Reading and writing big-endian fields.


_U8, _U16, _U32 = struct.Struct(">B"), struct.Struct(">H"), struct.Struct(">I")
_CLOCK_INFO, _U64 = struct.Struct(">QIIB"), struct.Struct(">Q")


def _unpack(r: Reader, layout: struct.Struct) -> tuple[int, ...]:
    """r.unpack with a compiled layout: the verifier reads a quote per evidence."""
    at = r.require(layout.size)
    r.pos = at + layout.size
    return layout.unpack_from(r.data, at)


def _u16(r: Reader) -> int:
    return _unpack(r, _U16)[0]


def _u32(r: Reader) -> int:
    return _unpack(r, _U32)[0]


def _tpm2b(r: Reader) -> bytes:
    return r.read(_u16(r))


def _pack(what: str, fmt: str, *values: int) -> bytes:
    try:
        return struct.pack(fmt, *values)
    except struct.error as exc:
        raise TpmError(what, f"value out of range: {exc}") from exc


def _pack_tpm2b(what: str, data: bytes) -> bytes:
    return _pack(what, ">H", len(data)) + data


def _finish(r: Reader) -> None:
    if r.remaining:
        r.fail(f"{r.remaining} bytes after the end of the structure")


# PCR selections.


def pcr_bitmap(pcrs: Iterable[int], size_of_select: int = 3) -> bytes:
    """The pcrSelect bitmap: bit (n % 8) of byte n // 8 selects PCR n."""
    bitmap = bytearray(size_of_select)
    for pcr in pcrs:
        if not 0 <= pcr < 8 * size_of_select:
            raise TpmError("PCR selection", f"PCR {pcr} does not fit {size_of_select} bytes")
        bitmap[pcr // 8] |= 1 << (pcr % 8)
    return bytes(bitmap)


@functools.lru_cache(maxsize=256)
def pcr_indices(bitmap: bytes) -> tuple[int, ...]:
    return tuple(n for n in range(8 * len(bitmap)) if bitmap[n // 8] >> (n % 8) & 1)


@dataclass(frozen=True)
class PcrSelection:
    """One TPMS_PCR_SELECTION: a bank and its selected PCRs (ascending, as the bitmap orders)."""

    bank: str
    pcrs: tuple[int, ...]
    size_of_select: int = 3

    def to_bytes(self) -> bytes:
        bitmap = pcr_bitmap(self.pcrs, self.size_of_select)
        return _pack("PCR selection", ">HB", hash_id(self.bank), self.size_of_select) + bitmap


def _read_pcr_selections(r: Reader) -> tuple[PcrSelection, ...]:
    count = _u32(r)
    if count > MAX_PCR_SELECTIONS:
        r.fail(f"{count} PCR selections (at most {MAX_PCR_SELECTIONS})", r.pos - 4)
    selections = []
    for _ in range(count):
        alg = _u16(r)
        if alg not in HASH_ALGORITHMS:
            r.fail(f"unknown PCR bank algorithm 0x{alg:04x}", r.pos - 2)
        size = _unpack(r, _U8)[0]
        if size > MAX_SIZE_OF_SELECT:
            r.fail(f"sizeofSelect {size} (at most {MAX_SIZE_OF_SELECT})", r.pos - 1)
        selections.append(PcrSelection(hash_name(alg), pcr_indices(r.read(size)), size))
    return tuple(selections)


def serialize_pcr_selections(selections: Sequence[PcrSelection]) -> bytes:
    """TPML_PCR_SELECTION."""
    body = b"".join(selection.to_bytes() for selection in selections)
    return _pack("PCR selection list", ">I", len(selections)) + body


def parse_pcr_selections(data: Bytes) -> tuple[PcrSelection, ...]:
    r = Reader(data, "TPML_PCR_SELECTION", TpmError)
    selections = _read_pcr_selections(r)
    _finish(r)
    return selections


def pcr_composite_digest(
    values: Mapping[int, bytes],
    bank: str = "sha256",
    *,
    pcrs: Sequence[int] | None = None,
    hash_alg: str | None = None,
) -> bytes:
    """H(selected PCR values of one bank concatenated in ascending PCR order), the pcrDigest
    of a quote over that bank. The hash is the quote's signing hash (`hash_alg`), which is
    usually, but not necessarily, the bank's own."""
    return quote_pcr_digest(
        [PcrSelection(bank, tuple(sorted(values if pcrs is None else pcrs)))],
        {bank: values},
        hash_alg or bank,
    )


def quote_pcr_digest(
    selections: Sequence[PcrSelection],
    values: Mapping[str, Mapping[int, bytes]],
    hash_alg: str,
) -> bytes:
    """pcrDigest over several banks: values taken selection by selection, in bitmap order."""
    parts = []
    for selection in selections:
        bank = values.get(selection.bank, {})
        for pcr in selection.pcrs:
            if pcr not in bank:
                raise TpmError("PCR values", f"no {selection.bank} value for PCR {pcr}")
            parts.append(bank[pcr])
    return digest(hash_alg, b"".join(parts))


# TPMS_ATTEST.


@dataclass(frozen=True)
class ClockInfo:
    clock: int
    reset_count: int
    restart_count: int
    safe: bool

    def to_bytes(self) -> bytes:
        fields = (self.clock, self.reset_count, self.restart_count, int(self.safe))
        return _pack("TPMS_CLOCK_INFO", ">QIIB", *fields)


@dataclass(frozen=True)
class QuoteInfo:
    selections: tuple[PcrSelection, ...]
    pcr_digest: bytes

    def to_bytes(self) -> bytes:
        selections = serialize_pcr_selections(self.selections)
        return selections + _pack_tpm2b("TPMS_QUOTE_INFO", self.pcr_digest)


@dataclass(frozen=True)
class Attest:
    """TPMS_ATTEST; `attested` keeps the type-specific TPMU_ATTEST bytes as signed."""

    type: int
    qualified_signer: bytes  # TPM2B_NAME contents
    extra_data: bytes  # the caller's nonce
    clock_info: ClockInfo
    firmware_version: int
    attested: bytes
    magic: int = TPM_GENERATED_VALUE

    @property
    def type_name(self) -> str:
        return ST_ATTEST_NAMES.get(self.type, f"0x{self.type:04x}")

    def to_bytes(self) -> bytes:
        head = _pack("TPMS_ATTEST", ">IH", self.magic, self.type)
        names = _pack_tpm2b("qualifiedSigner", self.qualified_signer)
        names += _pack_tpm2b("extraData", self.extra_data)
        firmware = _pack("firmwareVersion", ">Q", self.firmware_version)
        return head + names + self.clock_info.to_bytes() + firmware + self.attested

    def to_2b(self) -> bytes:
        return _pack_tpm2b("TPM2B_ATTEST", self.to_bytes())


def _read_attest(r: Reader) -> Attest:
    magic = _u32(r)
    if magic != TPM_GENERATED_VALUE:
        r.fail(f"magic 0x{magic:08x}, not 0x{TPM_GENERATED_VALUE:08x} (TPM_GENERATED)", r.pos - 4)
    kind = _u16(r)
    if kind not in ST_ATTEST_NAMES:
        r.fail(f"unknown attestation type 0x{kind:04x}", r.pos - 2)
    signer = _tpm2b(r)
    extra = _tpm2b(r)
    clock, resets, restarts, safe = _unpack(r, _CLOCK_INFO)
    if safe > 1:
        r.fail(f"clockInfo.safe is {safe}, not a TPMI_YES_NO", r.pos - 1)
    (firmware,) = _unpack(r, _U64)
    attested = r.read(r.remaining)
    clock_info = ClockInfo(clock, resets, restarts, bool(safe))
    return Attest(kind, signer, extra, clock_info, firmware, attested, magic)


def parse_attest(data: Bytes) -> Attest:
    """A TPMS_ATTEST as tpm2_quote -m writes it (no size prefix)."""
    return _read_attest(Reader(data, "TPMS_ATTEST", TpmError))


def parse_attest_2b(data: Bytes) -> Attest:
    r = Reader(data, "TPM2B_ATTEST", TpmError)
    inner = _tpm2b(r)
    _finish(r)
    return _read_attest(Reader(inner, "TPMS_ATTEST", TpmError, base=2))


@dataclass(frozen=True)
class Quote:
    """A TPMS_ATTEST of type quote, with its TPMS_QUOTE_INFO decoded."""

    attest: Attest
    info: QuoteInfo

    @property
    def nonce(self) -> bytes:
        return self.attest.extra_data

    @property
    def pcr_digest(self) -> bytes:
        return self.info.pcr_digest

    @property
    def selections(self) -> tuple[PcrSelection, ...]:
        return self.info.selections

    def to_bytes(self) -> bytes:
        return self.attest.to_bytes()


def parse_quote(data: Bytes) -> Quote:
    quote = _read_quote_fast(data) if isinstance(data, bytes) else None
    return quote if quote is not None else _read_quote(data)


_QUOTE_TAIL = struct.Struct(">QIIBQI")  # clockInfo, firmwareVersion, the selection count
_RSA_SIGNATURE_HEAD = struct.Struct(">HHH")  # sigAlg, hash, the signature's size


def _read_quote_fast(data: bytes) -> Quote | None:
    """parse_quote of a well-formed quote read by offsets, or None (then the checked reader
    says what is wrong): the verifier reads a quote per evidence."""
    end = len(data)
    if end < 10 or data[:6] != _QUOTE_HEAD:
        return None
    signer_end = 8 + int.from_bytes(data[6:8])
    extra_end = signer_end + 2 + int.from_bytes(data[signer_end : signer_end + 2])
    at = extra_end + _QUOTE_TAIL.size
    if at > end:
        return None
    clock, resets, restarts, safe, firmware, count = _QUOTE_TAIL.unpack_from(data, extra_end)
    if safe > 1 or count > MAX_PCR_SELECTIONS:
        return None
    selections = []
    for _ in range(count):
        if at + 3 > end:
            return None
        alg, size = int.from_bytes(data[at : at + 2]), data[at + 2]
        at += 3 + size
        if alg not in HASH_ALGORITHMS or size > MAX_SIZE_OF_SELECT or at > end:
            return None
        selections.append(_selection(alg, data[at - size : at]))
    if at + 2 > end or at + 2 + int.from_bytes(data[at : at + 2]) != end:
        return None
    # As the event log readers do: fill the frozen dataclasses' fields directly, not through
    # object.__setattr__ per field (most of the cost of reading a quote otherwise).
    clock_info: ClockInfo = object.__new__(ClockInfo)
    clock_info.__dict__.update(
        clock=clock, reset_count=resets, restart_count=restarts, safe=bool(safe)
    )
    attest: Attest = object.__new__(Attest)
    attest.__dict__.update(
        type=ST_ATTEST_QUOTE,
        qualified_signer=data[8:signer_end],
        extra_data=data[signer_end + 2 : extra_end],
        clock_info=clock_info,
        firmware_version=firmware,
        attested=data[extra_end + 25 :],
        magic=TPM_GENERATED_VALUE,
    )
    info: QuoteInfo = object.__new__(QuoteInfo)
    info.__dict__.update(selections=tuple(selections), pcr_digest=data[at + 2 :])
    quote: Quote = object.__new__(Quote)
    quote.__dict__.update(attest=attest, info=info)
    return quote


@functools.lru_cache(maxsize=64)
def _selection(alg: int, bitmap: bytes) -> PcrSelection:
    """A quote's PCR selection (immutable, so shared: a fleet's nodes quote the same PCRs)."""
    return PcrSelection(HASH_ALGORITHMS[alg][0], pcr_indices(bitmap), len(bitmap))


def _read_quote(data: Bytes) -> Quote:
    attest = parse_attest(data)
    if attest.type != ST_ATTEST_QUOTE:
        raise TpmError("TPMS_ATTEST", f"not a quote but a {attest.type_name} attestation", 4)
    r = Reader(attest.attested, "TPMS_QUOTE_INFO", TpmError, base=len(data) - len(attest.attested))
    info = QuoteInfo(_read_pcr_selections(r), _tpm2b(r))
    _finish(r)
    return Quote(attest, info)


# TPMT_SIGNATURE.


@dataclass(frozen=True)
class Signature:
    """TPMT_SIGNATURE for RSASSA / RSAPSS (`rsa`) or ECDSA (`r`, `s`, big-endian as stored)."""

    scheme: int
    hash_alg: int
    rsa: bytes = b""
    r: bytes = b""
    s: bytes = b""

    def to_bytes(self) -> bytes:
        head = _pack("TPMT_SIGNATURE", ">HH", self.scheme, self.hash_alg)
        if self.scheme in (ALG_RSASSA, ALG_RSAPSS):
            return head + _pack_tpm2b("TPMT_SIGNATURE", self.rsa)
        if self.scheme == ALG_ECDSA:
            return head + _pack_tpm2b("ECDSA r", self.r) + _pack_tpm2b("ECDSA s", self.s)
        raise TpmError("TPMT_SIGNATURE", f"unsupported signature scheme 0x{self.scheme:04x}")


def parse_signature(data: Bytes) -> Signature:
    if isinstance(data, bytes) and len(data) >= 6:  # an RSA signature, read by offsets
        scheme, hash_alg, size = _RSA_SIGNATURE_HEAD.unpack_from(data)
        rsa_scheme = scheme in (ALG_RSASSA, ALG_RSAPSS)
        if rsa_scheme and hash_alg in HASH_ALGORITHMS and 6 + size == len(data):
            return Signature(scheme, hash_alg, rsa=data[6:])
    return _read_signature(data)


def _read_signature(data: Bytes) -> Signature:
    r = Reader(data, "TPMT_SIGNATURE", TpmError)
    scheme = _u16(r)
    if scheme not in (ALG_RSASSA, ALG_RSAPSS, ALG_ECDSA):
        r.fail(f"unsupported signature scheme 0x{scheme:04x} (RSASSA, RSAPSS, ECDSA)", 0)
    hash_alg = _u16(r)
    if hash_alg not in HASH_ALGORITHMS:
        r.fail(f"unknown hash algorithm 0x{hash_alg:04x}", 2)
    if scheme == ALG_ECDSA:
        signature = Signature(scheme, hash_alg, r=_tpm2b(r), s=_tpm2b(r))
    else:
        signature = Signature(scheme, hash_alg, rsa=_tpm2b(r))
    _finish(r)
    return signature
