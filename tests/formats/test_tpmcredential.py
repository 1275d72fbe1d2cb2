"""MakeCredential in software against its own inverse (ActivateCredential with an EK private key
we hold), the spec's rules on what can be wrapped, and the parsers under hypothesis. That a
real TPM agrees is tests/oracle/test_tpmcredential_oracle.py."""

from __future__ import annotations

import contextlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st

from ultraviolet.formats.tpm import (
    AK_ATTRIBUTES,
    ALG_ECC,
    ALG_NULL,
    ALG_RSA,
    ALG_SHA1,
    ALG_SHA256,
    EccParameters,
    PublicArea,
    RsaParameters,
    Scheme,
    SymmetricDefinition,
    parse_public_2b,
)
from ultraviolet.formats.tpmcredential import (
    ALG_AES,
    ALG_CFB,
    CredentialError,
    IdObject,
    activate_credential,
    credential_file,
    kdf_a,
    make_credential,
    parse_credential_file,
    parse_id_object,
    recover_seed,
    wrap_credential,
)

# TCG EK Credential Profile, default templates: PolicySecret(TPM_RH_ENDORSEMENT) and
# fixedtpm|fixedparent|sensitivedataorigin|adminwithpolicy|restricted|decrypt.
EK_POLICY = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")
EK_ATTRIBUTES = 0x000300B2
AES_128_CFB = SymmetricDefinition(ALG_AES, 128, ALG_CFB)


def ek_public_area(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> PublicArea:
    """The default EK template (RSA-2048 or ECC P-256) around a key we hold."""
    if isinstance(key, rsa.RSAPrivateKey):
        modulus = key.public_key().public_numbers().n.to_bytes(256)
        rsa_parameters = RsaParameters(AES_128_CFB, Scheme(ALG_NULL), 2048, 0, modulus)
        return PublicArea(ALG_RSA, ALG_SHA256, EK_ATTRIBUTES, EK_POLICY, rsa_parameters)
    numbers = key.public_key().public_numbers()
    ecc_parameters = EccParameters(
        AES_128_CFB, Scheme(ALG_NULL), 0x0003, Scheme(ALG_NULL),
        numbers.x.to_bytes(32), numbers.y.to_bytes(32),
    )  # fmt: skip
    return PublicArea(ALG_ECC, ALG_SHA256, EK_ATTRIBUTES, EK_POLICY, ecc_parameters)


@pytest.fixture(scope="module", params=["rsa", "ecc"])
def ek(
    request: pytest.FixtureRequest,
) -> tuple[rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, PublicArea]:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if request.param == "rsa":
        key = rsa.generate_private_key(65537, 2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    return key, ek_public_area(key)


AK_NAME = bytes.fromhex("000b") + bytes(range(32))
SECRET = b"the verifier's secret, 32 bytes!"


def test_round_trip(ek: tuple[rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, PublicArea]) -> None:
    private, public = ek
    blob, encrypted = make_credential(public, AK_NAME, SECRET)
    assert activate_credential(private, public, AK_NAME, blob, encrypted) == SECRET
    size = 256 if public.type == ALG_RSA else 2 + 32 + 2 + 32
    assert int.from_bytes(encrypted[:2]) == size == len(encrypted) - 2
    # TPM2B_ID_OBJECT: size, TPM2B_DIGEST HMAC-SHA256, then the encrypted 2 + 32-byte credential.
    assert parse_id_object(blob) == IdObject(blob[4:36], blob[36:])
    assert len(blob) == 2 + 2 + 32 + 2 + len(SECRET)


def test_only_the_named_key_activates(
    ek: tuple[rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, PublicArea],
) -> None:
    private, public = ek
    blob, encrypted = make_credential(public, AK_NAME, SECRET)
    other_name = AK_NAME[:-1] + b"\xff"
    with pytest.raises(CredentialError, match="integrity HMAC"):
        activate_credential(private, public, other_name, blob, encrypted)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(CredentialError, match="integrity HMAC"):
        activate_credential(private, public, AK_NAME, tampered, encrypted)


def test_other_ek_cannot_activate() -> None:
    mine, theirs = (rsa.generate_private_key(65537, 2048) for _ in range(2))
    blob, encrypted = make_credential(ek_public_area(mine), AK_NAME, SECRET)
    with pytest.raises(CredentialError, match="OAEP"):
        activate_credential(theirs, ek_public_area(theirs), AK_NAME, blob, encrypted)


def test_fixed_randomness_is_deterministic(
    ek: tuple[rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, PublicArea],
) -> None:
    private, public = ek
    if public.type == ALG_RSA:
        seed = bytes(range(32))
        first, _ = make_credential(public, AK_NAME, SECRET, seed=seed)
        second, encrypted = make_credential(public, AK_NAME, SECRET, seed=seed)
        assert recover_seed(private, public, encrypted) == seed
    else:
        ephemeral = ec.generate_private_key(ec.SECP256R1())
        first, _ = make_credential(public, AK_NAME, SECRET, ephemeral=ephemeral)
        second, encrypted = make_credential(public, AK_NAME, SECRET, ephemeral=ephemeral)
        seed = recover_seed(private, public, encrypted)
    assert first == second == wrap_credential(ALG_SHA256, 128, seed, AK_NAME, SECRET).to_2b()
    # Fresh randomness otherwise.
    assert (
        make_credential(public, AK_NAME, SECRET)[0] != make_credential(public, AK_NAME, SECRET)[0]
    )


def test_kdf_a_counter_mode_and_bit_truncation() -> None:
    long = kdf_a(ALG_SHA256, b"key", b"STORAGE", b"u", b"v", 512)
    assert len(long) == 64
    # The bit count is part of every block's input: 256 bits is not a prefix of 512.
    assert kdf_a(ALG_SHA256, b"key", b"STORAGE", b"u", b"v", 256) != long[:32]
    assert kdf_a(ALG_SHA256, b"key", b"STORAGE\0", b"u", b"v", 256) == kdf_a(
        ALG_SHA256, b"key", b"STORAGE", b"u", b"v", 256
    )
    odd = kdf_a(ALG_SHA1, b"key", b"X", b"", b"", 12)
    assert len(odd) == 2 and odd[0] < 0x10


def test_refuses_what_a_tpm_would() -> None:
    ek = ek_public_area(rsa.generate_private_key(65537, 2048))
    with pytest.raises(CredentialError, match="1 to 32"):
        make_credential(ek, AK_NAME, bytes(33))
    with pytest.raises(CredentialError, match="1 to 32"):
        make_credential(ek, AK_NAME, b"")
    with pytest.raises(CredentialError, match="AK name"):
        make_credential(ek, AK_NAME[:-1], SECRET)
    signing = PublicArea(
        ALG_RSA, ALG_SHA256, AK_ATTRIBUTES, b"",
        RsaParameters(SymmetricDefinition(), Scheme(0x0014, ALG_SHA256), 2048, 0,
                      ek.parameters.modulus),  # type: ignore[union-attr]
    )  # fmt: skip
    with pytest.raises(CredentialError, match="not AES-CFB"):
        make_credential(signing, AK_NAME, SECRET)
    with pytest.raises(CredentialError, match="seed"):
        ecc = ek_public_area(ec.generate_private_key(ec.SECP256R1()))
        make_credential(ecc, AK_NAME, SECRET, seed=bytes(32))


def test_credential_file_framing() -> None:
    ek = ek_public_area(rsa.generate_private_key(65537, 2048))
    blob, encrypted = make_credential(ek, AK_NAME, SECRET)
    framed = credential_file(blob, encrypted)
    assert framed[:8] == bytes.fromhex("badcc0de00000001")
    assert parse_credential_file(framed) == (blob, encrypted)
    with pytest.raises(CredentialError, match="magic"):
        parse_credential_file(b"\0" + framed[1:])
    with pytest.raises(CredentialError, match="version 2"):
        parse_credential_file(framed[:7] + b"\x02" + framed[8:])
    with pytest.raises(CredentialError, match="after the end"):
        parse_credential_file(framed + b"\0")
    with pytest.raises(CredentialError, match="truncated"):
        parse_credential_file(framed[:-1])


def test_public_area_template_round_trips() -> None:
    public = ek_public_area(ec.generate_private_key(ec.SECP256R1()))
    assert parse_public_2b(public.to_2b()) == public


@given(st.binary(max_size=300))
def test_parsers_fail_only_with_credential_errors(data: bytes) -> None:
    for parse in (parse_id_object, parse_credential_file):
        with contextlib.suppress(CredentialError):
            parse(data)


@given(st.binary(max_size=64), st.binary(max_size=200), st.binary(min_size=2, max_size=300))
def test_id_object_and_file_round_trip(hmac: bytes, encrypted: bytes, secret: bytes) -> None:
    blob = IdObject(hmac, encrypted).to_2b()
    assert parse_id_object(blob) == IdObject(hmac, encrypted)
    secret_2b = len(secret).to_bytes(2) + secret
    assert parse_credential_file(credential_file(blob, secret_2b)) == (blob, secret_2b)
