"""PKCS#7 / CMS SignedData: parse, verify a signer against trusted certificates, sign.

pyca/cryptography creates PKCS#7 signatures but does not verify them, so the structure is read
here (RFC 5652 and PKCS#7 v1.5, which Authenticode uses) and only the signature primitive goes
through cryptography. The digest of the content covers the *contents octets* of the
encapsulated content: the value of an OCTET STRING (CMS) or, for PKCS#7 v1.5 content such as
Authenticode's SpcIndirectDataContent, the SEQUENCE without its tag and length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from ultraviolet.errors import FormatError
from ultraviolet.formats import der
from ultraviolet.formats._reader import Bytes

SIGNED_DATA = "1.2.840.113549.1.7.2"
DATA = "1.2.840.113549.1.7.1"
SPC_INDIRECT_DATA = "1.3.6.1.4.1.311.2.1.4"
ATTR_CONTENT_TYPE = "1.2.840.113549.1.9.3"
ATTR_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
RSA_PSS = "1.2.840.113549.1.1.10"

DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "1.3.14.3.2.26": hashes.SHA1,
    "2.16.840.1.101.3.4.2.1": hashes.SHA256,
    "2.16.840.1.101.3.4.2.2": hashes.SHA384,
    "2.16.840.1.101.3.4.2.3": hashes.SHA512,
}
# Signature algorithm OIDs that name their own digest (used when it differs from the signer's).
SIGNATURE_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "1.2.840.113549.1.1.5": hashes.SHA1,
    "1.2.840.113549.1.1.11": hashes.SHA256,
    "1.2.840.113549.1.1.12": hashes.SHA384,
    "1.2.840.113549.1.1.13": hashes.SHA512,
    "1.2.840.10045.4.3.2": hashes.SHA256,
    "1.2.840.10045.4.3.3": hashes.SHA384,
    "1.2.840.10045.4.3.4": hashes.SHA512,
}


class Pkcs7Error(FormatError):
    pass


@dataclass(frozen=True)
class SignerInfo:
    version: int
    issuer: bytes | None  # DER of the issuer Name (IssuerAndSerialNumber)
    serial: int | None
    subject_key_identifier: bytes | None
    digest_algorithm: str  # dotted OID
    signed_attributes: bytes | None  # exact DER as found ([0] IMPLICIT SET)
    message_digest: bytes | None
    content_type: str | None
    signature_algorithm: str
    signature_parameters: bytes  # DER of the AlgorithmIdentifier parameters (PSS), or b""
    signature: bytes


@dataclass(frozen=True)
class SignedData:
    version: int
    digest_algorithms: tuple[str, ...]
    content_type: str
    content: bytes | None  # the encapsulated content's contents octets; None when detached
    content_element: bytes | None  # the encapsulated element's full DER (Authenticode parses it)
    certificates: tuple[x509.Certificate, ...]
    signers: tuple[SignerInfo, ...]


@dataclass(frozen=True)
class SignatureCheck:
    ok: bool
    reason: str
    signer: x509.Certificate | None = None


def _algorithm(element: der.DerElement, what: str) -> tuple[str, bytes]:
    fields = der.child_list(element.expect(der.SEQUENCE, what), what, 1)
    parameters = fields[1].encoded if len(fields) > 1 else b""
    return der.decode_oid(fields[0]), parameters


def parse_signed_data(data: Bytes) -> SignedData:
    """Parse a DER ContentInfo that wraps SignedData."""
    try:
        return _parse_signed_data(data)
    except der.DerError as exc:
        raise Pkcs7Error("PKCS#7 " + exc.structure, exc.detail, exc.offset) from exc


def _parse_signed_data(data: Bytes) -> SignedData:
    info = der.child_list(der.parse(data).expect(der.SEQUENCE, "ContentInfo"), "ContentInfo", 2)
    if der.decode_oid(info[0]) != SIGNED_DATA:
        raise Pkcs7Error("ContentInfo", "content type is not signedData", info[0].offset)
    signed = der.only_child(info[1].expect(0, "ContentInfo content", der.CONTEXT), "content")
    fields = der.child_list(signed.expect(der.SEQUENCE, "SignedData"), "SignedData", 4)
    version = der.decode_integer(fields[0])
    digests = tuple(_algorithm(a, "digestAlgorithm")[0] for a in fields[1].children())
    content_type, content, element = _encapsulated(fields[2])
    certificates: list[x509.Certificate] = []
    rest = list(fields[3:])
    if rest and rest[0].is_context(0):
        certificates = [_certificate(c) for c in rest.pop(0).children()]
    if rest and rest[0].is_context(1):
        rest.pop(0)  # CRLs: not used
    if len(rest) != 1 or not rest[0].is_universal(der.SET):
        raise Pkcs7Error("SignedData", "signerInfos SET expected", fields[-1].offset)
    signers = tuple(_signer(s) for s in rest[0].children())
    return SignedData(
        version, digests, content_type, content, element, tuple(certificates), signers
    )


def _encapsulated(element: der.DerElement) -> tuple[str, bytes | None, bytes | None]:
    fields = der.child_list(element.expect(der.SEQUENCE, "encapContentInfo"), "encapContentInfo", 1)
    content_type = der.decode_oid(fields[0])
    if len(fields) == 1:
        return content_type, None, None
    inner = der.only_child(fields[1].expect(0, "eContent", der.CONTEXT), "eContent")
    return content_type, inner.content, inner.encoded


def _certificate(element: der.DerElement) -> x509.Certificate:
    try:
        certificate = x509.load_der_x509_certificate(element.encoded)
        # cryptography parses fields lazily; touch what verification reads so that a broken
        # certificate fails here, as a format error, not later.
        _ = (certificate.issuer, certificate.subject, certificate.serial_number)
        _ = (certificate.public_key(), certificate.extensions)
        return certificate
    except (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion) as exc:
        raise Pkcs7Error(
            "certificate", f"not a valid X.509 certificate: {exc}", element.offset
        ) from exc


def _signer(element: der.DerElement) -> SignerInfo:
    fields = list(der.child_list(element.expect(der.SEQUENCE, "SignerInfo"), "SignerInfo", 5))
    version = der.decode_integer(fields.pop(0))
    sid = fields.pop(0)
    issuer = serial = ski = None
    if sid.is_universal(der.SEQUENCE):
        name, number = der.child_list(sid, "IssuerAndSerialNumber", 2)[:2]
        issuer, serial = name.encoded, der.decode_integer(number)
    elif sid.is_context(0):
        ski = sid.content
    else:
        raise Pkcs7Error("SignerInfo", "unknown signer identifier", sid.offset)
    digest_algorithm = _algorithm(fields.pop(0), "digestAlgorithm")[0]
    attributes = fields.pop(0) if fields and fields[0].is_context(0) else None
    if len(fields) < 2:
        raise Pkcs7Error("SignerInfo", "signature algorithm and value expected", element.offset)
    signature_algorithm, parameters = _algorithm(fields[0], "signatureAlgorithm")
    signature = fields[1].expect(der.OCTET_STRING, "signature").content
    digest, content_type = _attributes(attributes) if attributes else (None, None)
    return SignerInfo(
        version,
        issuer,
        serial,
        ski,
        digest_algorithm,
        attributes.encoded if attributes else None,
        digest,
        content_type,
        signature_algorithm,
        parameters,
        signature,
    )


def _attributes(element: der.DerElement) -> tuple[bytes | None, str | None]:
    digest = content_type = None
    for attribute in element.children():
        kind, values = der.child_list(attribute, "Attribute", 2)[:2]
        oid = der.decode_oid(kind)
        value = der.child_list(values, "Attribute values", 1)[0]
        if oid == ATTR_MESSAGE_DIGEST:
            digest = value.expect(der.OCTET_STRING, "messageDigest").content
        elif oid == ATTR_CONTENT_TYPE:
            content_type = der.decode_oid(value)
    return digest, content_type


def _same_certificate(a: x509.Certificate, b: x509.Certificate) -> bool:
    return a.public_bytes(serialization.Encoding.DER) == b.public_bytes(serialization.Encoding.DER)


def _identifies(signer: SignerInfo, certificate: x509.Certificate) -> bool:
    if signer.subject_key_identifier is not None:
        try:
            extension = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound:
            return False
        return extension.value.digest == signer.subject_key_identifier
    return (
        signer.serial == certificate.serial_number
        and signer.issuer == certificate.issuer.public_bytes()
    )


def _trusted(certificate: x509.Certificate, trusted: Sequence[x509.Certificate]) -> bool:
    for anchor in trusted:
        if _same_certificate(certificate, anchor):
            return True
        try:
            certificate.verify_directly_issued_by(anchor)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return False


def _digest_class(signer: SignerInfo) -> type[hashes.HashAlgorithm] | None:
    return DIGESTS.get(signer.digest_algorithm)


def _signature_ok(signer: SignerInfo, key: object, signed: bytes) -> bool:
    digest_class = SIGNATURE_DIGESTS.get(signer.signature_algorithm) or _digest_class(signer)
    if digest_class is None:
        return False
    try:
        if isinstance(key, rsa.RSAPublicKey):
            scheme: padding.AsymmetricPadding = padding.PKCS1v15()
            if signer.signature_algorithm == RSA_PSS:
                scheme = padding.PSS(padding.MGF1(digest_class()), padding.PSS.AUTO)
            key.verify(signer.signature, signed, scheme, digest_class())
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signer.signature, signed, ec.ECDSA(digest_class()))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _content_digest(signer: SignerInfo, content: bytes) -> bytes | None:
    digest_class = _digest_class(signer)
    if digest_class is None:
        return None
    hasher = hashes.Hash(digest_class())
    hasher.update(content)
    return hasher.finalize()


def _check_signer(signer: SignerInfo, certificate: x509.Certificate, content: bytes) -> str | None:
    """Why this signer's signature over `content` does not verify, or None if it does."""
    if _digest_class(signer) is None:
        return f"unsupported digest algorithm {signer.digest_algorithm}"
    if signer.signed_attributes is not None:
        if signer.message_digest != _content_digest(signer, content):
            return "the signed messageDigest does not match the content"
        # The signature covers the attributes encoded as SET OF, not as [0] IMPLICIT.
        signed = b"\x31" + signer.signed_attributes[1:]
    else:
        signed = content
    if not _signature_ok(signer, certificate.public_key(), signed):
        return "the signature does not verify with the signer's certificate"
    return None


def verify_signed_data(
    signed: SignedData,
    trusted: Sequence[x509.Certificate],
    *,
    detached_content: bytes | None = None,
) -> SignatureCheck:
    """Whether a signer of `signed` verifies over the content and is (issued by) a trusted cert."""
    content = signed.content if detached_content is None else detached_content
    if content is None:
        return SignatureCheck(False, "detached signature but no content given")
    if not signed.signers:
        return SignatureCheck(False, "no signer in the signature")
    if not trusted:
        return SignatureCheck(False, "no trusted certificate given")
    reasons: list[str] = []
    for signer in signed.signers:
        candidates = [c for c in (*signed.certificates, *trusted) if _identifies(signer, c)]
        if not candidates:
            reasons.append("the signer's certificate is neither embedded nor trusted")
            continue
        for certificate in candidates:
            problem = _check_signer(signer, certificate, content)
            if problem:
                reasons.append(problem)
            elif not _trusted(certificate, trusted):
                subject = certificate.subject.rfc4514_string()
                reasons.append(f"signed by {subject}, which is not a trusted certificate")
            else:
                return SignatureCheck(True, "signature verifies", certificate)
    return SignatureCheck(False, "; ".join(dict.fromkeys(reasons)))


def sign_detached(
    content: bytes,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    certificate: x509.Certificate,
    *,
    include_certificate: bool = True,
    signed_attributes: bool = False,
) -> bytes:
    """A DER PKCS#7 detached signature over `content` (SHA-256)."""
    options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]
    if not signed_attributes:
        options.append(pkcs7.PKCS7Options.NoAttributes)
    if not include_certificate:
        options.append(pkcs7.PKCS7Options.NoCerts)
    builder = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(content)
        .add_signer(certificate, key, hashes.SHA256())
    )
    return builder.sign(serialization.Encoding.DER, options)
