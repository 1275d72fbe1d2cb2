"""EK acceptance by certificate chain (attest/ekcert.py through Verifier.enrol): a certificate
issued under a configured root enrols; one of another CA, expired, not yet valid, for another
key, of the wrong kind or not a certificate is refused with `enrol.ek-certificate` and its
reason, and nothing is stored. The acceptance modes keep the approved list working."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from ultraviolet.attest.api import create_app
from ultraviolet.attest.ekcert import (
    EkCertificateAuthorities,
    EkCertificateRefused,
    load_ca_certificates,
)
from ultraviolet.attest.enrolment import (
    EkAcceptance,
    EkPolicy,
    ek_fingerprint,
)
from ultraviolet.attest.errors import Forbidden
from ultraviolet.attest.model import NodeState
from ultraviolet.attest.service import Verifier, VerifierConfig
from ultraviolet.attest.store import Enrolment, Node, Store
from ultraviolet.errors import AttestationError
from ultraviolet.formats.tpmcredential import activate_credential

from .certs import START, Authority, authority, ek_certificate, rsa_key
from .nodes import SimulatedNode

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


class Pki:
    def __init__(self) -> None:
        self.root = authority("Vendor Root CA")
        self.issuing = authority("Vendor EK CA", self.root)
        self.other_root = authority("Other Root CA")
        # Same name as the configured issuing CA, another key: only the signature tells.
        self.impostor = authority("Vendor EK CA", self.other_root)
        self.short_lived = authority("Vendor EK CA 2", self.root, not_after=NOW - DAY)

    def authorities(self, at: dt.datetime = NOW) -> EkCertificateAuthorities:
        chain = [self.root.certificate, self.issuing.certificate]
        if at < self.short_lived.certificate.not_valid_after_utc:
            chain.append(self.short_lived.certificate)
        return EkCertificateAuthorities.of(chain, at)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture(scope="module")
def node() -> SimulatedNode:
    return SimulatedNode("ek-node", "ecc")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(str(tmp_path / "verifier.db"))
    try:
        yield opened
    finally:
        opened.close()


def verifier_with(store: Store, policy: EkPolicy) -> Verifier:
    return Verifier(
        store,
        config=VerifierConfig(),
        ek_policy=policy,
        clock=lambda: NOW,
    )


def enrol(verifier: Verifier, node: SimulatedNode, certificate: bytes | None) -> NodeState:
    challenge = verifier.enrol(node.node_id, node.ek.to_2b(), certificate, node.ak.to_2b())
    secret = node.activate(challenge.credential_blob, challenge.encrypted_secret)
    return verifier.activate(challenge.enrolment, secret)[1]


def stored(store: Store) -> tuple[int, int]:
    with store.session() as session:
        enrolments = session.scalar(select(func.count()).select_from(Enrolment))
        nodes = session.scalar(select(func.count()).select_from(Node))
    return int(enrolments or 0), int(nodes or 0)


def test_an_ek_certificate_of_the_configured_ca_enrols(
    store: Store, pki: Pki, node: SimulatedNode
) -> None:
    verifier = verifier_with(store, EkPolicy(EkAcceptance.CERTIFICATE, pki.authorities()))
    certificate = ek_certificate(node.ek_key.public_key(), pki.issuing)
    assert enrol(verifier, node, certificate) is NodeState.UNKNOWN
    with store.session() as session:
        (kept,) = session.scalars(select(Enrolment)).all()
    assert kept.ek_certificate == certificate and kept.status == "activated"


CertificateMaker = Callable[[SimulatedNode, Pki], bytes | None]


def _ek(issuer: Callable[[Pki], Authority], **kwargs: Any) -> CertificateMaker:
    return lambda n, p: ek_certificate(n.ek_key.public_key(), issuer(p), **kwargs)


# case -> (certificate, reason, a piece of the message)
REFUSALS: dict[str, tuple[CertificateMaker, str, str]] = {
    "same-named CA, another key": (
        _ek(lambda p: p.impostor),
        "untrusted",
        "signature does not match",
    ),
    "another vendor's root": (
        _ek(lambda p: authority("Elsewhere", p.other_root)),
        "untrusted",
        "'CN=Elsewhere'",
    ),
    "self-issued by the node": (
        _ek(lambda p: authority("Vendor EK CA")),
        "untrusted",
        "signature does not match",
    ),
    "expired": (_ek(lambda p: p.issuing, not_after=NOW - DAY), "expired", "at 2026-11-22"),
    "not yet valid": (
        _ek(lambda p: p.issuing, not_before=NOW + DAY),
        "not-yet-valid",
        "from 2026-11-24",
    ),
    "issuing CA expired": (
        _ek(lambda p: p.short_lived),
        "untrusted",
        "not valid at validation time",
    ),
    "another key": (
        lambda n, p: ek_certificate(rsa_key().public_key(), p.issuing),
        "key-mismatch",
        "the EK presented is",
    ),
    "a TLS server certificate": (
        _ek(lambda p: p.issuing, usage=ExtendedKeyUsageOID.SERVER_AUTH),
        "untrusted",
        "lacks tcg-kp-EKCertificate",
    ),
    "a CA certificate": (
        _ek(lambda p: p.issuing, ca=True),
        "untrusted",
        "must not be a CA certificate",
    ),
    "not DER": (lambda n, p: b"\x30\x03\x02\x01\x00", "format", "not a usable DER"),
    "none sent": (lambda n, p: None, "missing", "sent no EK certificate"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_bad_ek_certificate_is_refused_by_reason_and_nothing_is_stored(
    store: Store, pki: Pki, node: SimulatedNode, case: str
) -> None:
    make, reason, message = REFUSALS[case]
    # Configured while the short-lived issuing CA was valid; checked at NOW, when it is not.
    verifier = verifier_with(
        store, EkPolicy(EkAcceptance.CERTIFICATE, pki.authorities(START + DAY))
    )
    verifier.approve_ek(ek_fingerprint(node.ek))  # not consulted: certificates only
    with pytest.raises(EkCertificateRefused) as refused:
        verifier.enrol(node.node_id, node.ek.to_2b(), make(node, pki), node.ak.to_2b())
    assert refused.value.reason == reason, refused.value
    assert message in refused.value.message
    assert (refused.value.status, refused.value.error_id) == (403, "enrol.ek-certificate")
    assert stored(store) == (0, 0)


def test_either_mode_admits_approved_eks_and_good_certificates(
    store: Store, pki: Pki, node: SimulatedNode
) -> None:
    verifier = verifier_with(store, EkPolicy(EkAcceptance.EITHER, pki.authorities()))
    with pytest.raises(Forbidden) as refused:  # no approval, no certificate
        verifier.enrol(node.node_id, node.ek.to_2b(), None, node.ak.to_2b())
    assert refused.value.error_id == "enrol.ek-not-approved"
    foreign = ek_certificate(node.ek_key.public_key(), pki.impostor)
    with pytest.raises(EkCertificateRefused, match="untrusted"):
        verifier.enrol(node.node_id, node.ek.to_2b(), foreign, node.ak.to_2b())
    assert stored(store) == (0, 0)
    good = ek_certificate(node.ek_key.public_key(), pki.issuing)
    assert enrol(verifier, node, good) is NodeState.UNKNOWN
    second = SimulatedNode("approved-node", "ecc")
    verifier.approve_ek(ek_fingerprint(second.ek))
    assert enrol(verifier, second, None) is NodeState.UNKNOWN


def test_the_default_policy_is_the_approved_list_and_ignores_certificates(
    store: Store, node: SimulatedNode
) -> None:
    verifier = verifier_with(store, EkPolicy())
    with pytest.raises(Forbidden) as refused:
        verifier.enrol(node.node_id, node.ek.to_2b(), b"junk", node.ak.to_2b())
    assert refused.value.error_id == "enrol.ek-not-approved"
    verifier.approve_ek(ek_fingerprint(node.ek))
    assert enrol(verifier, node, b"junk") is NodeState.UNKNOWN
    with pytest.raises(AttestationError, match="needs EK CA"):
        EkPolicy(EkAcceptance.CERTIFICATE)


def test_over_http_a_refused_certificate_is_a_403_with_its_reason(
    store: Store, pki: Pki, node: SimulatedNode
) -> None:
    verifier = verifier_with(store, EkPolicy(EkAcceptance.CERTIFICATE, pki.authorities()))
    certificate = ek_certificate(node.ek_key.public_key(), pki.impostor)
    body = {
        "node_id": node.node_id,
        "ek_public": base64.b64encode(node.ek.to_2b()).decode(),
        "ek_certificate": base64.b64encode(certificate).decode(),
        "ak_public": base64.b64encode(node.ak.to_2b()).decode(),
    }
    with TestClient(create_app(verifier, admin_token="ekcert-test-token-0123")) as client:
        answer = client.post("/v1/enrol", json=body)
        assert answer.status_code == 403
        assert answer.json()["error"] == "enrol.ek-certificate"
        assert answer.json()["message"].startswith("untrusted: no valid chain")
        body["ek_certificate"] = base64.b64encode(
            ek_certificate(node.ek_key.public_key(), pki.issuing)
        ).decode()
        challenge = client.post("/v1/enrol", json=body)
        assert challenge.status_code == 201, challenge.text
        secret = activate_credential(
            node.ek_key, node.ek, node.ak.name(),
            base64.b64decode(challenge.json()["credential_blob"]),
            base64.b64decode(challenge.json()["encrypted_secret"]),
        )  # fmt: skip
        path = f"/v1/enrol/{challenge.json()['enrolment']}/activate"
        assert client.post(path, json={"secret": base64.b64encode(secret).decode()}).json() == {
            "node_id": node.node_id,
            "state": "unknown",
        }


def _write(path: Path, *authorities: Authority, der: bool = False) -> Path:
    if der:
        path.write_bytes(authorities[0].der)
    else:
        path.write_bytes(b"".join(a.pem for a in authorities))
    return path


def test_ca_files_and_chains_are_checked_when_configured(tmp_path: Path, pki: Pki) -> None:
    bundle = load_ca_certificates(_write(tmp_path / "bundle.pem", pki.root, pki.issuing))
    single = load_ca_certificates(_write(tmp_path / "root.der", pki.root, der=True))
    assert bundle == [pki.root.certificate, pki.issuing.certificate]
    assert single == [pki.root.certificate]
    authorities = EkCertificateAuthorities.of(bundle, NOW)
    assert (authorities.roots, authorities.intermediates) == (
        (pki.root.certificate,),
        (pki.issuing.certificate,),
    )
    with pytest.raises(AttestationError, match="no self-signed root"):
        EkCertificateAuthorities.of([pki.issuing.certificate], NOW)
    with pytest.raises(AttestationError, match="not a CA chaining to a configured root"):
        EkCertificateAuthorities.of([pki.other_root.certificate, pki.issuing.certificate], NOW)
    leaf = x509.load_der_x509_certificate(ek_certificate(rsa_key().public_key(), pki.root))
    with pytest.raises(AttestationError, match="keyCertSign"):  # an EK certificate is no CA
        EkCertificateAuthorities.of([pki.root.certificate, leaf], NOW)
    (tmp_path / "junk.pem").write_bytes(b"not a certificate")
    with pytest.raises(AttestationError, match="neither PEM certificates nor a DER"):
        load_ca_certificates(tmp_path / "junk.pem")
    with pytest.raises(AttestationError, match=r"absent\.pem"):
        load_ca_certificates(tmp_path / "absent.pem")
    key_pem = pki.root.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "key.pem").write_bytes(key_pem)
    with pytest.raises(AttestationError, match=r"key\.pem"):
        load_ca_certificates(tmp_path / "key.pem")
