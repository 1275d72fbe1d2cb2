"""TPM 2.0 structures: a real Windows quote, in-memory quotes signed with software keys, forged
quotes, writer round trips, corrupt input -> TpmError."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from ultraviolet.formats.tpm import (
    AK_ATTRIBUTES,
    ALG_ECC,
    ALG_ECDSA,
    ALG_NULL,
    ALG_RSA,
    ALG_RSAPSS,
    ALG_RSASSA,
    ALG_SHA1,
    ALG_SHA256,
    RH_ENDORSEMENT,
    ST_ATTEST_QUOTE,
    Attest,
    ClockInfo,
    EccParameters,
    PcrSelection,
    PublicArea,
    QuoteInfo,
    QuoteVerificationError,
    RsaParameters,
    Scheme,
    Signature,
    SymmetricDefinition,
    TpmError,
    parse_attest,
    parse_attest_2b,
    parse_pcr_selections,
    parse_public,
    parse_public_2b,
    parse_quote,
    parse_signature,
    pcr_bitmap,
    pcr_composite_digest,
    pcr_indices,
    qualified_name,
    quote_pcr_digest,
    serialize_pcr_selections,
    verify_quote,
    verify_signature,
)
from ultraviolet.formats.tpm_structures import _read_quote, _read_quote_fast, _read_signature

WINDOWS = Path("/work/shared/testdata/eventlogs/windows_gcp_shielded_vm.json")
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
NONCE = bytes.fromhex("0011223344556677")


def _windows() -> dict[str, Any]:
    return json.loads(WINDOWS.read_text())  # type: ignore[no-any-return]


def _b64(vector: dict[str, Any], *path: str) -> bytes:
    value: Any = vector
    for key in path:
        value = value[key]
    return base64.b64decode(value)


# In-memory quotes: what a TPM would produce, signed with software keys.


def public_from_key(
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey, scheme: int | None = None
) -> PublicArea:
    """The public area a TPM shows for an RSA-2048 or P-256 restricted signing key."""
    symmetric = SymmetricDefinition()
    if isinstance(key, rsa.RSAPublicKey):
        modulus = key.public_numbers().n.to_bytes(256)
        chosen = Scheme(scheme or ALG_RSASSA, ALG_SHA256)
        rsa_parameters = RsaParameters(symmetric, chosen, 2048, 0, modulus)
        return PublicArea(ALG_RSA, ALG_SHA256, AK_ATTRIBUTES, b"", rsa_parameters)
    point = key.public_numbers()
    x, y = point.x.to_bytes(32), point.y.to_bytes(32)
    ecc_parameters = EccParameters(symmetric, Scheme(ALG_ECDSA, ALG_SHA256), 3, Scheme(), x, y)
    return PublicArea(ALG_ECC, ALG_SHA256, AK_ATTRIBUTES, b"", ecc_parameters)


def _pcr_values(bank: str = "sha256") -> dict[int, bytes]:
    return {pcr: hashlib.new(bank, bytes([pcr])).digest() for pcr in (0, 1, 2, 7)}


def _attest(nonce: bytes = NONCE, values: dict[int, bytes] | None = None) -> Attest:
    values = _pcr_values() if values is None else values
    info = QuoteInfo((PcrSelection("sha256", tuple(sorted(values))),), pcr_composite_digest(values))
    return Attest(
        ST_ATTEST_QUOTE,
        b"\x00\x0b" + hashlib.sha256(b"signer").digest(),
        nonce,
        ClockInfo(123456, 7, 2, True),
        0x2020_0323_0017_0000,
        info.to_bytes(),
    )


def _sign(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, message: bytes, pss: bool = False
) -> Signature:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
        return Signature(ALG_ECDSA, ALG_SHA256, r=r.to_bytes(32), s=s.to_bytes(32))
    if pss:
        chosen = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        return Signature(ALG_RSAPSS, ALG_SHA256, rsa=key.sign(message, chosen, hashes.SHA256()))
    signed = key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    return Signature(ALG_RSASSA, ALG_SHA256, rsa=signed)


PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
KEYS: dict[str, tuple[PrivateKey, PublicArea, bool]] = {
    "rsassa": (RSA_KEY, public_from_key(RSA_KEY.public_key()), False),
    "rsapss": (RSA_KEY, public_from_key(RSA_KEY.public_key(), scheme=ALG_RSAPSS), True),
    "ecdsa": (EC_KEY, public_from_key(EC_KEY.public_key()), False),
}


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_in_memory_quote_verifies(kind: str) -> None:
    key, public, pss = KEYS[kind]
    message = _attest().to_bytes()
    signature = _sign(key, message, pss)
    assert parse_signature(signature.to_bytes()) == signature
    quote = verify_quote(message, signature, public, nonce=NONCE)
    assert quote.nonce == NONCE
    assert quote.selections == (PcrSelection("sha256", (0, 1, 2, 7)),)
    assert quote.pcr_digest == pcr_composite_digest(_pcr_values())
    assert quote.attest.clock_info == ClockInfo(123456, 7, 2, True)
    assert quote.to_bytes() == message
    # The public key the TPM structure describes is the signer's.
    assert public.public_key().public_numbers() == key.public_key().public_numbers()


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_forged_quotes_are_rejected(kind: str) -> None:
    key, public, pss = KEYS[kind]
    message = _attest().to_bytes()
    signature = _sign(key, message, pss)
    for offset in (0, 5, 20, 44, len(message) - 1):  # magic, type, signer, nonce, pcrDigest
        forged = bytearray(message)
        forged[offset] ^= 0x01
        with pytest.raises((QuoteVerificationError, TpmError)):
            verify_quote(bytes(forged), signature, public)
    # A quote of other PCR values, signed by a key that is not the AK.
    other = _attest(values={0: bytes(32)}).to_bytes()
    with pytest.raises(QuoteVerificationError, match="does not verify"):
        verify_quote(other, _sign(OTHER_KEY, other), KEYS["rsassa"][1])
    with pytest.raises(QuoteVerificationError, match="nonce"):
        verify_quote(message, signature, public, nonce=b"another nonce")
    with pytest.raises(QuoteVerificationError, match="signed by"):
        verify_quote(message, signature, public, qualified_signer=b"\x00\x0b" + bytes(32))
    broken = Signature(
        signature.scheme, signature.hash_alg, signature.rsa[::-1], signature.s, signature.r
    )
    with pytest.raises(QuoteVerificationError):
        verify_quote(message, broken, public)


def test_scheme_mismatches_are_rejected() -> None:
    message = _attest().to_bytes()
    rsassa = _sign(RSA_KEY, message)
    with pytest.raises(QuoteVerificationError, match="is not the key's"):
        verify_signature(message, rsassa, KEYS["rsapss"][1])
    unrestricted = public_from_key(RSA_KEY.public_key(), scheme=ALG_NULL)  # NULL: any scheme
    verify_signature(message, rsassa, unrestricted)
    with pytest.raises(QuoteVerificationError, match="cannot come from a RSA key"):
        verify_signature(message, _sign(EC_KEY, message), unrestricted)


def test_non_quote_attestations() -> None:
    attest = Attest(0x8017, b"", b"", ClockInfo(0, 0, 0, False), 0, b"\x00\x00\x00\x00")
    data = attest.to_bytes()
    assert parse_attest(data) == attest and parse_attest(data).type_name == "certify"
    with pytest.raises(TpmError, match="not a quote but a certify"):
        parse_quote(data)
    assert parse_attest_2b(attest.to_2b()) == attest
    # Data the AK signed that a TPM did not generate (TPM2_Sign refuses the TPM_GENERATED
    # magic to restricted keys) is never a quote, whatever the signature.
    outside = replace(_attest(), magic=0x12345678).to_bytes()
    with pytest.raises(TpmError, match="magic 0x12345678"):
        verify_quote(outside, _sign(RSA_KEY, outside), KEYS["rsassa"][1])


# The real Windows vector (GCP Shielded VM, AK created by go-attestation).


def test_windows_quote_verifies_and_matches_its_pcrs() -> None:
    vector = _windows()
    public = parse_public(_b64(vector, "AK", "Public"))
    assert public.to_bytes() == _b64(vector, "AK", "Public")
    assert public.attributes & AK_ATTRIBUTES == AK_ATTRIBUTES and "noda" in public.attribute_names
    signature = parse_signature(_b64(vector, "Quote", "Signature"))
    assert (signature.scheme, signature.hash_alg) == (ALG_RSASSA, ALG_SHA1)
    message = _b64(vector, "Quote", "Quote")
    quote = verify_quote(message, signature, public, nonce=b"")
    assert quote.selections == (PcrSelection("sha1", tuple(range(24))),)
    values = {p["Index"]: base64.b64decode(p["Digest"]) for p in vector["Log"]["PCRs"]}
    # The signing scheme's hash (SHA-1 here) makes pcrDigest, not the AK's nameAlg (SHA-256).
    assert quote.pcr_digest == pcr_composite_digest(values, "sha1")
    assert quote.pcr_digest == quote_pcr_digest(quote.selections, {"sha1": values}, "sha1")
    changed = {**values, 7: bytes(20)}
    assert pcr_composite_digest(changed, "sha1") != quote.pcr_digest
    forged = bytearray(message)
    forged[-1] ^= 0x80
    with pytest.raises(QuoteVerificationError):
        verify_quote(bytes(forged), signature, public)


def test_windows_ak_name_is_the_one_its_creation_attestation_certifies() -> None:
    vector = _windows()
    public = parse_public(_b64(vector, "AK", "Public"))
    creation = _b64(vector, "AK", "CreateAttestation")
    verify_signature(creation, parse_signature(_b64(vector, "AK", "CreateSignature")), public)
    attest = parse_attest(creation)
    assert attest.type_name == "creation"
    # TPMS_CREATION_INFO starts with the object's TPM2B_NAME.
    size = int.from_bytes(attest.attested[:2])
    assert attest.attested[2 : 2 + size] == public.name()
    assert public.name()[:2] == b"\x00\x0b"


# Names.


def test_names_and_qualified_names() -> None:
    public = KEYS["rsassa"][1]
    assert public.name() == b"\x00\x0b" + hashlib.sha256(public.to_bytes()).digest()
    parent = qualified_name(RH_ENDORSEMENT, b"\x00\x0b" + bytes(32))
    assert (
        parent
        == b"\x00\x0b" + hashlib.sha256(b"\x40\x00\x00\x0b" + b"\x00\x0b" + bytes(32)).digest()
    )
    assert (
        qualified_name(parent, public.name())[2:] == hashlib.sha256(parent + public.name()).digest()
    )
    with pytest.raises(TpmError, match="2-byte"):
        qualified_name(parent, b"\x00")
    null_named = PublicArea(public.type, 0x0010, public.attributes, b"", public.parameters)
    with pytest.raises(TpmError, match="cannot name"):
        null_named.name()


def test_ak_attributes() -> None:
    names = ("fixedtpm", "fixedparent", "sensitivedataorigin", "userwithauth", "restricted", "sign")
    public = KEYS["rsassa"][1]
    assert public.attribute_names == names  # in bit order, as tpm2_readpublic lists them


def test_public_key_conversion_errors() -> None:
    rsa_public = KEYS["rsassa"][1]
    assert isinstance(rsa_public.parameters, RsaParameters)
    short_modulus = replace(rsa_public.parameters, modulus=b"\x01" * 255)
    with pytest.raises(TpmError, match="2048-bit key with a 255-byte modulus"):
        replace(rsa_public, parameters=short_modulus).public_key()
    even_exponent = replace(rsa_public.parameters, exponent=4)
    with pytest.raises(TpmError, match="not a usable RSA key"):
        replace(rsa_public, parameters=even_exponent).public_key()
    ecc_public = KEYS["ecdsa"][1]
    assert isinstance(ecc_public.parameters, EccParameters)
    off_curve = replace(ecc_public.parameters, x=b"\x01" * 32, y=b"\x02" * 32)
    with pytest.raises(TpmError, match="not a point on secp256r1"):
        replace(ecc_public, parameters=off_curve).public_key()
    unknown_curve = replace(ecc_public.parameters, curve=0x0010)
    with pytest.raises(TpmError, match="unsupported ECC curve 0x0010"):
        replace(ecc_public, parameters=unknown_curve).public_key()


# PCR selections.


def test_pcr_bitmaps() -> None:
    assert pcr_bitmap([0, 1, 2, 7]) == b"\x87\x00\x00"
    assert pcr_bitmap([23, 8]) == b"\x00\x01\x80"
    assert pcr_indices(b"\x87\x00\x80") == (0, 1, 2, 7, 23)
    with pytest.raises(TpmError, match="PCR 24 does not fit 3 bytes"):
        pcr_bitmap([24])
    selections = (PcrSelection("sha1", (0,)), PcrSelection("sha256", (1, 16), 4))
    data = serialize_pcr_selections(selections)
    assert data == bytes.fromhex("00000002" + "000403010000" + "000b0402000100")
    assert parse_pcr_selections(data) == selections


def test_composite_digest_order_and_missing_values() -> None:
    values = _pcr_values()
    expected = hashlib.sha256(b"".join(values[pcr] for pcr in (0, 1, 2, 7))).digest()
    assert pcr_composite_digest(values) == expected
    assert (
        pcr_composite_digest(values, pcrs=[7, 0]) == hashlib.sha256(values[0] + values[7]).digest()
    )
    selections = [PcrSelection("sha1", (3,)), PcrSelection("sha256", (0,))]
    both = {"sha1": {3: b"\x03" * 20}, "sha256": values}
    assert (
        quote_pcr_digest(selections, both, "sha256")
        == hashlib.sha256(b"\x03" * 20 + values[0]).digest()
    )
    with pytest.raises(TpmError, match="no sha256 value for PCR 9"):
        pcr_composite_digest(values, pcrs=[9])


# Malformed input.


@pytest.mark.parametrize(
    ("parse", "data", "message", "offset"),
    [
        (parse_attest, b"\xff\x54\x43\x48\x80\x18", "magic 0xff544348", 0),
        (parse_attest, b"\xff\x54\x43\x47\x80\x99", "unknown attestation type 0x8099", 4),
        (parse_attest, b"\xff\x54\x43\x47\x80\x18\x00\x22\x00", "truncated", 8),
        (parse_attest_2b, b"\x00\x02\xff\x54", "truncated", 2),
        (parse_signature, b"\x00\x05\x00\x0b", "unsupported signature scheme 0x0005", 0),
        (parse_signature, b"\x00\x14\x00\x99\x00\x00", "unknown hash algorithm 0x0099", 2),
        (parse_signature, b"\x00\x14\x00\x0b\x00\x00\x00", "1 bytes after", 6),
        (parse_public, b"\x00\x08\x00\x0b\x00\x00\x00\x00\x00\x00", "unsupported key type", 0),
        (parse_public_2b, b"\x00\x01\x00\x00", "1 bytes after", 3),
        (parse_pcr_selections, b"\x00\x00\x00\x11", "17 PCR selections", 0),
        (parse_pcr_selections, b"\x00\x00\x00\x01\x00\x99\x03", "unknown PCR bank", 4),
        (parse_pcr_selections, b"\x00\x00\x00\x01\x00\x0b\x21", "sizeofSelect 33", 6),
    ],
)
def test_malformed_structures(parse: Any, data: bytes, message: str, offset: int) -> None:
    with pytest.raises(TpmError, match=message) as caught:
        parse(data)
    assert caught.value.offset == offset


def test_quote_errors_point_into_the_attest() -> None:
    message = bytearray(_attest().to_bytes())
    message[-33] = 0x21  # pcrDigest size claims one byte more than there is
    with pytest.raises(TpmError, match="truncated") as caught:
        parse_quote(bytes(message))
    assert caught.value.offset == len(message) - 32
    with pytest.raises(TpmError, match="out of range"):
        ClockInfo(-1, 0, 0, True).to_bytes()
    with pytest.raises(TpmError, match="unsupported signature scheme"):
        Signature(0x0005, ALG_SHA256).to_bytes()


# Properties: round trips of the writers, and nothing but TpmError from any bytes.

NAMES = st.binary(max_size=40)
CLOCKS = st.builds(
    ClockInfo,
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.booleans(),
)
SELECTIONS = st.lists(
    st.integers(1, 4).flatmap(
        lambda size: st.builds(
            PcrSelection,
            st.sampled_from(["sha1", "sha256", "sha384", "sha512"]),
            st.frozensets(st.integers(0, 8 * size - 1)).map(lambda s: tuple(sorted(s))),
            st.just(size),
        )
    ),
    max_size=4,
).map(tuple)


@st.composite
def quotes(draw: st.DrawFn) -> tuple[Attest, QuoteInfo]:
    """A well-formed quote of any signer, nonce, clock, firmware and PCR selections."""
    info = QuoteInfo(draw(SELECTIONS), draw(st.binary(max_size=64)))
    return Attest(
        ST_ATTEST_QUOTE,
        draw(NAMES),
        draw(NAMES),
        draw(CLOCKS),
        draw(st.integers(0, 2**64 - 1)),
        info.to_bytes(),
    ), info


@given(quotes())
def test_quote_writer_round_trips(quote: tuple[Attest, QuoteInfo]) -> None:
    attest, info = quote
    data = attest.to_bytes()
    quote = parse_quote(data)
    assert (quote.attest, quote.info) == (attest, info)
    assert parse_attest_2b(attest.to_2b()) == attest


@given(
    st.sampled_from([ALG_RSASSA, ALG_RSAPSS, ALG_ECDSA]),
    st.sampled_from([0x0004, 0x000B, 0x000C, 0x000D]),
    st.binary(max_size=300),
    st.binary(max_size=70),
)
def test_signature_writer_round_trips(scheme: int, hash_alg: int, one: bytes, two: bytes) -> None:
    if scheme == ALG_ECDSA:
        signature = Signature(scheme, hash_alg, r=one, s=two)
    else:
        signature = Signature(scheme, hash_alg, rsa=one)
    assert parse_signature(signature.to_bytes()) == signature


@settings(max_examples=50)
@given(st.sampled_from(sorted(KEYS)), st.binary(max_size=64), st.integers(0, 2**32 - 1))
def test_public_writer_round_trips(kind: str, policy: bytes, attributes: int) -> None:
    base = KEYS[kind][1]
    public = PublicArea(base.type, base.name_alg, attributes, policy, base.parameters)
    assert parse_public(public.to_bytes()) == public
    assert parse_public_2b(public.to_2b()) == public
    assert public.name() != base.name() or (policy, attributes) == (b"", base.attributes)


# Each parser with the writer that must give back the exact bytes it accepted.
PARSERS: list[tuple[Any, Any]] = [
    (parse_attest, Attest.to_bytes),
    (parse_attest_2b, Attest.to_2b),
    (parse_quote, lambda quote: quote.to_bytes()),
    (parse_signature, Signature.to_bytes),
    (parse_pcr_selections, serialize_pcr_selections),
    (parse_public, PublicArea.to_bytes),
    (parse_public_2b, PublicArea.to_2b),
]


def _only_tpm_errors(data: bytes) -> None:
    for parse, write in PARSERS:
        try:
            parsed = parse(data)
        except TpmError:
            continue
        assert write(parsed) == data
        if isinstance(parsed, PublicArea):
            with contextlib.suppress(TpmError):
                parsed.public_key()
                parsed.name()


@given(st.binary(max_size=400))
def test_random_bytes_raise_only_tpm_error(data: bytes) -> None:
    _only_tpm_errors(data)


SEEDS = [
    _attest().to_bytes(),
    KEYS["ecdsa"][1].to_bytes(),
    KEYS["rsassa"][1].to_2b(),
    _sign(EC_KEY, b"x").to_bytes(),
]


@settings(max_examples=300)
@given(
    st.sampled_from(range(len(SEEDS))),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_mutated_structures_raise_only_tpm_error(
    seed: int, mutations: list[tuple[int, int]]
) -> None:
    data = bytearray(SEEDS[seed])
    for offset, value in mutations:
        data[offset % len(data)] = value
    _only_tpm_errors(bytes(data))
    # A mutated quote never verifies: the signature covers every byte.
    if seed == 0 and bytes(data) != SEEDS[0]:
        signature = _sign(RSA_KEY, SEEDS[0])
        with pytest.raises((QuoteVerificationError, TpmError)):
            verify_quote(bytes(data), signature, KEYS["rsassa"][1])


def _fast_quote_is_checked(data: bytes) -> bool:
    """The verifier's quote reader by offsets answers what the checked reader answers, or
    nothing where the checked reader raises; True if it answered."""
    fast = _read_quote_fast(data)
    try:
        checked = _read_quote(data)
    except TpmError:
        assert fast is None
        return False
    assert fast == checked
    return fast is not None


@given(quotes())
def test_quote_fast_path_equals_the_checked_reader(quote: tuple[Attest, QuoteInfo]) -> None:
    attest, _ = quote
    assert _fast_quote_is_checked(attest.to_bytes())  # a well-formed quote is never left out


@settings(max_examples=400)
@given(
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 400),
)
def test_quote_fast_path_on_mutated_quotes(mutations: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(SEEDS[0])
    for offset, value in mutations:
        data[offset % len(data)] = value
    _fast_quote_is_checked(bytes(data))
    _fast_quote_is_checked(bytes(data[:cut]))


@settings(max_examples=300)
@given(
    st.sampled_from([ALG_RSASSA, ALG_RSAPSS, ALG_ECDSA, 0x0001]),
    st.sampled_from([0x0004, 0x000B, 0x000D, 0x0099]),
    st.binary(max_size=300),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=3),
    st.integers(0, 400),
)
def test_signature_fast_path_equals_the_checked_reader(
    scheme: int, hash_alg: int, body: bytes, mutations: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(struct.pack(">HHH", scheme, hash_alg, len(body)) + body)
    for offset, value in mutations:
        data[offset % len(data)] = value
    for candidate in (bytes(data), bytes(data[:cut])):
        try:
            checked = _read_signature(candidate)
        except TpmError:
            with pytest.raises(TpmError):
                parse_signature(candidate)
            continue
        assert parse_signature(candidate) == checked
