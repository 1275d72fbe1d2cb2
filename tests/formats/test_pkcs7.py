"""DER, PKCS#7 and verity-sig: our signatures verify, tampering fails, garbage -> FormatError."""

from __future__ import annotations

import base64
import contextlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from ultraviolet.build.keys import KeyPair, generate_signing_key
from ultraviolet.formats import der
from ultraviolet.formats.pkcs7 import (
    Pkcs7Error,
    parse_signed_data,
    sign_detached,
    verify_signed_data,
)
from ultraviolet.formats.veritysig import (
    VeritySigError,
    certificate_fingerprint,
    create_verity_sig,
    parse_verity_sig,
    render_verity_sig,
    verify_verity_sig,
)

KEYS: KeyPair = generate_signing_key("pkcs7 unit tests")
OTHER: KeyPair = generate_signing_key("someone else")
ROOT_HASH = bytes(range(32))


def test_oid_and_integer_decoding() -> None:
    oid = der.parse(bytes.fromhex("06092a864886f70d010702"))
    assert der.decode_oid(oid) == "1.2.840.113549.1.7.2"
    assert der.decode_integer(der.parse(b"\x02\x02\x00\xff")) == 255
    assert der.decode_integer(der.parse(b"\x02\x01\xff")) == -1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x30\x80\x00\x00", "indefinite"),
        (b"\x30\x05\x01", "runs past"),
        (b"\x04\x81\x05abcde", "minimally"),
        (b"\x02\x01\x01\x00", "trailing"),
        (b"", "truncated"),
    ],
)
def test_der_errors(data: bytes, message: str) -> None:
    with pytest.raises(der.DerError, match=message):
        der.parse(data)


@pytest.mark.parametrize("attributes", [False, True])
@pytest.mark.parametrize("certificate", [True, False])
def test_detached_signature_round_trip(attributes: bool, certificate: bool) -> None:
    content = b"the content"
    signature = sign_detached(
        content,
        KEYS.key,
        KEYS.certificate,
        include_certificate=certificate,
        signed_attributes=attributes,
    )
    signed = parse_signed_data(signature)
    assert signed.content is None
    assert len(signed.certificates) == (1 if certificate else 0)
    assert (signed.signers[0].signed_attributes is not None) == attributes
    check = verify_signed_data(signed, [KEYS.certificate], detached_content=content)
    assert check.ok and check.signer == KEYS.certificate
    assert not verify_signed_data(signed, [KEYS.certificate], detached_content=b"other").ok
    refused = verify_signed_data(signed, [OTHER.certificate], detached_content=content)
    assert not refused.ok
    assert not verify_signed_data(signed, [], detached_content=content).ok


def test_ecdsa_signature() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ec")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    signature = sign_detached(b"data", key, certificate, signed_attributes=True)
    check = verify_signed_data(
        parse_signed_data(signature), [certificate], detached_content=b"data"
    )
    assert check.ok


def test_verity_sig_round_trip() -> None:
    signature = create_verity_sig(ROOT_HASH, KEYS.key, KEYS.certificate)
    rendered = render_verity_sig(signature, size=4096)
    assert len(rendered) == 4096 and rendered.endswith(b"\0")
    parsed = parse_verity_sig(rendered)
    assert parsed == signature
    assert parsed.certificate_fingerprint == certificate_fingerprint(KEYS.certificate)
    assert verify_verity_sig(parsed, [KEYS.certificate]).ok
    assert not verify_verity_sig(parsed, [OTHER.certificate]).ok


def test_verity_sig_signature_binds_the_root_hash() -> None:
    signature = create_verity_sig(ROOT_HASH, KEYS.key, KEYS.certificate)
    forged = type(signature)(bytes(32), signature.certificate_fingerprint, signature.signature)
    assert not verify_verity_sig(forged, [KEYS.certificate]).ok


def test_verity_sig_fingerprint_must_name_the_signer() -> None:
    signature = create_verity_sig(ROOT_HASH, KEYS.key, KEYS.certificate)
    wrong = type(signature)(signature.root_hash, bytes(32), signature.signature)
    check = verify_verity_sig(wrong, [KEYS.certificate])
    assert not check.ok and "certificateFingerprint" in check.reason


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"", "empty"),
        (b"{not json", "Expecting"),
        (b"[]", "not a JSON object"),
        (b'{"rootHash": "zz", "certificateFingerprint": "00", "signature": ""}', "bad hex"),
        (b'{"rootHash": "00"}', "missing"),
        (b"{}\0\0x\0", "garbage"),
    ],
)
def test_verity_sig_errors(text: bytes, message: str) -> None:
    with pytest.raises(VeritySigError, match=message):
        parse_verity_sig(text)


SIGNATURE = sign_detached(b"x", KEYS.key, KEYS.certificate, signed_attributes=True)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, len(SIGNATURE) - 1), st.integers(0, 255)), max_size=4))
def test_mutated_pkcs7(mutations: list[tuple[int, int]]) -> None:
    data = bytearray(SIGNATURE)
    for offset, value in mutations:
        data[offset] = value
    try:
        signed = parse_signed_data(bytes(data))
    except Pkcs7Error:
        return
    verify_signed_data(signed, [KEYS.certificate], detached_content=b"x")


@given(st.binary(max_size=600))
def test_random_der(data: bytes) -> None:
    with contextlib.suppress(Pkcs7Error):
        parse_signed_data(data)


@given(
    st.dictionaries(
        st.sampled_from(["rootHash", "certificateFingerprint", "signature", "x"]),
        st.one_of(st.text(max_size=70), st.integers(), st.none()),
    )
)
def test_random_verity_sig_json(document: dict[str, object]) -> None:
    with contextlib.suppress(VeritySigError):
        parse_verity_sig(json.dumps(document).encode())


def test_base64_of_signature_is_strict() -> None:
    good = render_verity_sig(create_verity_sig(ROOT_HASH, KEYS.key, KEYS.certificate))
    document = json.loads(good)
    document["signature"] = "!!" + base64.b64encode(b"x").decode()
    with pytest.raises(VeritySigError, match="base64"):
        parse_verity_sig(json.dumps(document).encode())
