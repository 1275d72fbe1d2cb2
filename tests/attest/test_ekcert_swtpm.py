"""EK certificates of TPMs manufactured by swtpm_setup (`--create-ek-cert`, signed by
swtpm-localca's intermediate under its root: real TCG-profile EK certificates with an empty
subject and a critical subjectAltName of TPM attributes) against `uvctl attest serve --ek-ca`.

End to end: the verifier process trusts TPM A's local CA (root and intermediate files); the
agent on TPM A reads its EK certificate from NV, enrols and the swtpm activates the credential;
the agent on TPM B (another local CA) is refused with `enrol.ek-certificate` and nothing of it
is stored. In process: TPM A's certificate re-issued by its own CA key is refused when expired
(and accepted with the dates as they were), and A's genuine certificate with B's EK is refused
as certifying another key."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import func, select

from ultraviolet.attest.ekcert import (
    EkCertificateAuthorities,
    EkCertificateRefused,
    load_ca_certificates,
)
from ultraviolet.attest.enrolment import EkAcceptance, EkPolicy
from ultraviolet.attest.service import Verifier, VerifierConfig
from ultraviolet.attest.store import Enrolment, Store
from ultraviolet.node.agent import Agent, AgentConfig, VerifierRefused, pcr_selection
from ultraviolet.node.ipe import AuditLogSource
from ultraviolet.node.tpm import TpmDriver
from ultraviolet.testbed.swtpm import manufacture, running_swtpm
from ultraviolet.tools import ToolsChroot

from .nodes import SimulatedNode
from .services import ADMIN, Service

pytestmark = pytest.mark.oracle


@dataclass(frozen=True)
class Manufactured:
    directory: Path
    ek_public: bytes
    ek_certificate: bytes

    @property
    def ca_files(self) -> tuple[Path, Path]:
        """swtpm-localca's intermediate (issuercert.pem) and root."""
        ca = self.directory / "ca"
        return ca / "issuercert.pem", ca / "swtpm-localca-rootca-cert.pem"

    def ca_key(self) -> rsa.RSAPrivateKey:
        pem = (self.directory / "ca" / "signkey.pem").read_bytes()  # GnuTLS text, then PEM
        key = serialization.load_pem_private_key(pem, None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key

    def driver(self, chroot: ToolsChroot, tcti: str) -> TpmDriver:
        state = self.directory / "agent"
        state.mkdir(exist_ok=True)
        return TpmDriver(state, tcti=tcti, chroot=chroot, binds=[self.directory])


def _manufacture(chroot: ToolsChroot, directory: Path) -> Manufactured:
    manufacture(chroot, directory)
    with running_swtpm(chroot, directory) as swtpm:
        driver = Manufactured(directory, b"", b"").driver(chroot, swtpm.tcti)
        certificate = driver.ek_certificate()
        assert certificate is not None
        return Manufactured(directory, driver.ek_public(), certificate)


@pytest.fixture(scope="module")
def tpms(
    tools_chroot: ToolsChroot, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Manufactured, Manufactured]:
    base = tmp_path_factory.mktemp("ek-tpms")
    return _manufacture(tools_chroot, base / "a"), _manufacture(tools_chroot, base / "b")


def _authorities(tpm: Manufactured, now: dt.datetime) -> EkCertificateAuthorities:
    certificates = [c for path in tpm.ca_files for c in load_ca_certificates(path)]
    return EkCertificateAuthorities.of(certificates, now)


def _agent(tpm: TpmDriver, node_id: str, url: str, state: Path) -> Agent:
    config = AgentConfig(
        node_id=node_id,
        verifier_url=url,
        state_dir=state,
        pcrs=pcr_selection([7]),
        ipe=AuditLogSource(state / "audit.log", state),
    )
    return Agent(config, tpm)


def _get(url: str) -> object:
    request = urllib.request.Request(url, headers=ADMIN)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def service(tmp_path: Path, tpms: tuple[Manufactured, Manufactured]) -> Iterator[Service]:
    intermediate, root = tpms[0].ca_files
    running = Service(
        str(tmp_path / "verifier.db"), tmp_path, "http://127.0.0.1:9/hook",
        extra=("--ek-ca", str(intermediate), "--ek-ca", str(root),
               "--ek-acceptance", "certificate"),
    )  # fmt: skip
    running.start()
    try:
        yield running
    finally:
        running.stop()


def test_the_agent_of_a_tpm_certified_by_a_trusted_ca_enrols_and_another_is_refused(
    tools_chroot: ToolsChroot, tpms: tuple[Manufactured, Manufactured], service: Service
) -> None:
    trusted, foreign = tpms
    with running_swtpm(tools_chroot, trusted.directory) as swtpm:
        agent = _agent(trusted.driver(tools_chroot, swtpm.tcti), "tpm-a", service.url,
                       trusted.directory / "agent")  # fmt: skip
        agent.enrol()  # the EK certificate from NV; ActivateCredential by the swtpm
    node = _get(service.url + "/v1/nodes/tpm-a")
    assert isinstance(node, dict) and node["state"] == "unknown"
    certified = x509.load_der_x509_certificate(trusted.ek_certificate).public_key()
    der = certified.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert node["ek_fingerprint"] == hashlib.sha256(der).hexdigest()

    with running_swtpm(tools_chroot, foreign.directory) as swtpm:
        agent = _agent(foreign.driver(tools_chroot, swtpm.tcti), "tpm-b", service.url,
                       foreign.directory / "agent")  # fmt: skip
        with pytest.raises(VerifierRefused) as refused:
            agent.enrol()
    assert refused.value.status == 403
    assert "enrol.ek-certificate" in str(refused.value) and "untrusted" in str(refused.value)
    nodes = _get(service.url + "/v1/admin/nodes")
    assert isinstance(nodes, dict) and [n["node_id"] for n in nodes["nodes"]] == ["tpm-a"]


def _reissued(tpm: Manufactured, not_before: dt.datetime, not_after: dt.datetime) -> bytes:
    """The TPM's EK certificate as its CA would issue it with other dates (same issuer name,
    extensions and key, signed by the local CA's own key)."""
    genuine = x509.load_der_x509_certificate(tpm.ek_certificate)
    builder = x509.CertificateBuilder(
        issuer_name=genuine.issuer,
        subject_name=genuine.subject,
        public_key=genuine.public_key(),
        serial_number=x509.random_serial_number(),
        not_valid_before=not_before,
        not_valid_after=not_after,
        extensions=list(genuine.extensions),
    )
    return builder.sign(tpm.ca_key(), hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_expired_and_other_key_certificates_of_a_trusted_ca_are_refused(
    tpms: tuple[Manufactured, Manufactured], tmp_path: Path
) -> None:
    trusted, foreign = tpms
    now = dt.datetime.now(dt.UTC)
    store = Store.open(str(tmp_path / "verifier.db"))
    verifier = Verifier(
        store,
        config=VerifierConfig(),
        ek_policy=EkPolicy(EkAcceptance.CERTIFICATE, _authorities(trusted, now)),
    )
    ak = SimulatedNode("ak-holder", "ecc").ak.to_2b()  # the AK is not what is checked here
    try:
        year = dt.timedelta(days=365)
        expired = _reissued(trusted, now - 2 * year, now - year)
        with pytest.raises(EkCertificateRefused) as refused:
            verifier.enrol("tpm-a", trusted.ek_public, expired, ak)
        assert refused.value.reason == "expired"
        with pytest.raises(EkCertificateRefused) as refused:
            verifier.enrol("tpm-b", foreign.ek_public, trusted.ek_certificate, ak)
        assert refused.value.reason == "key-mismatch"
        with store.session() as session:
            assert session.scalar(select(func.count()).select_from(Enrolment)) == 0
        # The same re-issue with dates that hold, and the genuine certificate, are accepted.
        current = _reissued(trusted, now - year, now + year)
        assert verifier.enrol("tpm-a", trusted.ek_public, current, ak).enrolment
        assert verifier.enrol("tpm-a", trusted.ek_public, trusted.ek_certificate, ak).enrolment
    finally:
        store.close()
