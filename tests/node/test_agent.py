"""The agent's HTTP side against a minimal verifier written here (stdlib http.server on a real
socket): the client's error classes, backoff with jitter, the enrolment protocol (our
MakeCredential answered by swtpm through the driver, the EK certificate of a manufactured TPM),
nonce-bound quotes that verify with the enrolled AK, re-enrolment when the verifier forgot the
node, retry after a 503."""

from __future__ import annotations

import argparse
import base64
import datetime
import fcntl
import ipaddress
import json
import secrets
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ultraviolet.cli import main
from ultraviolet.cli.agent import _configuration
from ultraviolet.errors import AttestationError
from ultraviolet.formats.evidence import parse_evidence
from ultraviolet.formats.tpm import PublicArea, parse_public_2b, parse_signature, verify_quote
from ultraviolet.formats.tpmcredential import make_credential
from ultraviolet.node.agent import (
    RETRY_AFTER_CAP,
    Agent,
    AgentConfig,
    Backoff,
    VerifierClient,
    VerifierRefused,
    VerifierUnavailable,
    _read_log,
    pcr_selection,
    retry_after_seconds,
)
from ultraviolet.node.ipe import AuditLogSource
from ultraviolet.node.tpm import TpmDriver
from ultraviolet.testbed.simnode import simulated_node
from ultraviolet.testbed.swtpm import Swtpm
from ultraviolet.tools import ToolsChroot

EVENTLOG = Path("/work/shared/testdata/eventlogs/crypto_agile_eventlog")


SCRIPTED = {"error": "scripted"}


@dataclass
class MiniVerifier:
    """Enrols by credential activation, issues single-use nonces, checks quotes by the AK."""

    ak: dict[str, PublicArea] = field(default_factory=dict)
    pending: dict[str, tuple[str, PublicArea, bytes]] = field(default_factory=dict)
    nonces: dict[str, bytes] = field(default_factory=dict)
    script: list[int] = field(default_factory=list)  # statuses to answer before serving
    retry_after: str | None = None  # sent with the scripted answers
    log: list[tuple[str, int]] = field(default_factory=list)
    evidence: list[Any] = field(default_factory=list)
    enrolments: list[dict[str, Any]] = field(default_factory=list)

    def handle(self, path: str, body: Any) -> tuple[int, Any]:
        if self.script:
            return self.script.pop(0), SCRIPTED
        parts = path.strip("/").split("/")
        if parts == ["v1", "enrol"]:
            self.enrolments.append(body)
            ek, ak = (
                parse_public_2b(b64(body["ek_public"])),
                parse_public_2b(b64(body["ak_public"])),
            )
            secret = secrets.token_bytes(32)
            blob, encrypted = make_credential(ek, ak.name(), secret)
            enrolment = secrets.token_hex(16)
            self.pending[enrolment] = (body["node_id"], ak, secret)
            return 201, {
                "enrolment": enrolment,
                "credential_blob": base64.b64encode(blob).decode(),
                "encrypted_secret": base64.b64encode(encrypted).decode(),
            }
        if parts[:2] == ["v1", "enrol"] and parts[3:] == ["activate"]:
            node_id, ak, secret = self.pending.pop(parts[2])
            if b64(body["secret"]) != secret:
                return 403, {"error": "wrong secret"}
            self.ak[node_id] = ak
            return 200, {"node_id": node_id, "state": "unknown"}
        node_id = parts[2]
        if node_id not in self.ak:
            return 404, {"error": "node.unknown"}
        if parts[3] == "nonce":
            self.nonces[node_id] = secrets.token_bytes(32)
            return 200, {"nonce": self.nonces[node_id].hex(), "expires_at": "soon"}
        nonce = self.nonces.pop(node_id)
        evidence = parse_evidence(json.dumps(body["evidence"]).encode())
        signature = parse_signature(evidence.signature)
        verify_quote(evidence.quote, signature, self.ak[node_id], nonce=nonce)
        self.evidence.append(evidence)
        return 200, {"state": "trusted", "findings": [], "release": None}


def b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


@contextmanager
def serving(verifier: MiniVerifier, tls: ssl.SSLContext | None = None) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status, answer = verifier.handle(self.path, json.loads(raw))
            verifier.log.append((self.path, status))
            payload = json.dumps(answer).encode()
            self.send_response(status)
            if answer == SCRIPTED and verifier.retry_after is not None:
                self.send_header("Retry-After", verifier.retry_after)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_backoff_grows_to_its_cap_with_full_jitter() -> None:
    backoff = Backoff(base=2.0, cap=60.0)
    assert [backoff.delay(n, lambda: 1.0) for n in range(1, 8)] == [4, 8, 16, 32, 60, 60, 60]
    assert backoff.delay(3, lambda: 0.0) == 0.0
    assert backoff.delay(10**6, lambda: 0.5) == 30.0  # no overflow for a long outage
    draws = {backoff.delay(4) for _ in range(50)}
    assert len(draws) > 1 and all(0 <= d <= 32 for d in draws)


def test_client_classifies_answers() -> None:
    verifier = MiniVerifier(script=[503, 404, 200])
    with serving(verifier) as url:
        client = VerifierClient(url, timeout=5)
        with pytest.raises(VerifierUnavailable, match="HTTP 503"):
            client.post("/v1/nodes/x/nonce", {})
        with pytest.raises(VerifierRefused, match="HTTP 404") as refused:
            client.post("/v1/nodes/x/nonce", {})
        assert refused.value.status == 404
        assert client.post("/v1/nodes/x/nonce", {}) == {"error": "scripted"}
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(VerifierUnavailable, match="refused"):
        VerifierClient(f"http://127.0.0.1:{port}", timeout=5).post("/v1/enrol", {})


def test_retry_after_in_seconds_or_as_an_http_date_is_followed_up_to_an_hour() -> None:
    now = datetime.datetime(2026, 11, 23, 12, 0, 0, tzinfo=datetime.UTC)
    assert retry_after_seconds("120", now) == 120.0
    assert retry_after_seconds(" 0 ", now) == 0.0
    assert retry_after_seconds("Mon, 23 Nov 2026 12:01:30 GMT", now) == 90.0
    assert retry_after_seconds("Mon, 23 Nov 2026 12:01:30 -0000", now) == 90.0
    assert retry_after_seconds("Mon, 23 Nov 2026 11:00:00 GMT", now) == 0.0  # already past
    assert retry_after_seconds("86400", now) == RETRY_AFTER_CAP
    assert retry_after_seconds("Tue, 01 Dec 2026 00:00:00 GMT", now) == RETRY_AFTER_CAP
    for unreadable in (None, "", "soon", "-5", "1.5", "\u0661\u0662", "Mon, 99 Nov 2026"):
        assert retry_after_seconds(unreadable, now) is None, unreadable


def test_the_client_reads_a_503s_retry_after() -> None:
    verifier = MiniVerifier(script=[503], retry_after="7")
    with serving(verifier) as url:
        with pytest.raises(VerifierUnavailable) as unavailable:
            VerifierClient(url, timeout=5).post("/v1/nodes/x/nonce", {})
        assert unavailable.value.retry_after == 7.0
        verifier.script = [503]
        verifier.retry_after = None
        with pytest.raises(VerifierUnavailable) as plain:
            VerifierClient(url, timeout=5).post("/v1/nodes/x/nonce", {})
        assert plain.value.retry_after is None


def test_a_missing_firmware_log_is_an_error_not_empty_evidence(tmp_path: Path) -> None:
    with pytest.raises(AttestationError, match="no firmware event log"):
        _read_log(tmp_path / "absent", required=True)
    assert _read_log(tmp_path / "absent", required=False) == b""


def test_uvctl_agent_needs_a_verifier_and_pcrs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["agent", "--once", "--state-dir", str(tmp_path), "--node-id", "n"]
    assert main([*base, "--pcrs", "0"]) == 2
    assert "no verifier" in capsys.readouterr().err
    assert main([*base, "--verifier", "http://127.0.0.1:9", "--pcrs", "0,x"]) == 2
    assert "--pcrs" in capsys.readouterr().err
    assert main([*base, "--verifier", "http://127.0.0.1:9"]) == 2
    assert "no PCRs" in capsys.readouterr().err


@pytest.mark.oracle
def test_agent_protocol_against_a_minimal_verifier(
    tools_chroot: ToolsChroot, tmp_path: Path
) -> None:
    def make(swtpm: Swtpm, state: Path) -> TpmDriver:
        return TpmDriver(state, tcti=swtpm.tcti, chroot=tools_chroot, binds=[swtpm.directory])

    verifier = MiniVerifier()
    log = EVENTLOG.read_bytes()
    with (
        serving(verifier) as url,
        simulated_node(tools_chroot, tmp_path, make, log, manufactured=True) as node,
    ):
        sleeps: list[float] = []
        config = AgentConfig(
            node_id="mini-1",
            verifier_url=url,
            state_dir=node.state_dir,
            pcrs=pcr_selection([0, 1, 2, 3, 4, 5, 6, 7]),
            ipe=AuditLogSource(tmp_path / "audit.log", node.state_dir),
            interval=7.0,
            firmware_log=node.firmware_log_path,
            userspace_log=tmp_path / "absent.log",
            backoff=Backoff(base=1.0, cap=4.0),
        )
        agent = Agent(config, node.tpm, sleep=sleeps.append)
        agent.run(cycles=2)
        assert len(sleeps) == 1 and 6.3 <= sleeps[0] <= 7.7  # the interval +-10%, no backoff
        paths = [path for path, _ in verifier.log]
        assert paths[:2] == ["/v1/enrol", paths[1]] and paths[1].endswith("/activate")
        assert paths[2:] == ["/v1/nodes/mini-1/nonce", "/v1/nodes/mini-1/evidence"] * 2
        # The EK certificate travels with the enrolment and certifies the EK sent.
        (enrolment,) = verifier.enrolments
        certificate = x509.load_der_x509_certificate(b64(enrolment["ek_certificate"]))
        ek = parse_public_2b(b64(enrolment["ek_public"]))
        assert certificate.public_key() == ek.public_key()
        first = verifier.evidence[0]
        assert first.firmware_log == log and first.userspace_log == b""
        assert sorted(first.pcrs["sha256"]) == [0, 1, 2, 3, 4, 5, 6, 7]

        # The verifier lost its database: 404 for the node, the agent enrols again.
        verifier.ak.clear()
        verifier.log.clear()
        agent.step()
        assert [p.rsplit("/", 1)[-1] for p, _ in verifier.log] == [
            "nonce", "enrol", "activate", "nonce", "evidence",
        ]  # fmt: skip

        # A 503 on the evidence: back off, then a fresh nonce and a new quote.
        verifier.script = [503]
        sleeps.clear()
        agent.run(cycles=1)
        assert len(sleeps) == 1 and 0 <= sleeps[0] <= 2.0
        assert len(verifier.evidence) == 4
        assert verifier.evidence[-1].quote != verifier.evidence[-2].quote

        # A 503 that says when to come back: that long, plus the jittered backoff.
        verifier.script, verifier.retry_after = [503], "3"
        sleeps.clear()
        agent.run(cycles=1)
        assert len(sleeps) == 1 and 3.0 <= sleeps[0] <= 3.0 + 2.0
        assert len(verifier.evidence) == 5


def test_uvctl_agent_takes_verifier_and_pcrs_from_the_policy(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "src/ultraviolet/examples/container-host.toml"
    policy = tmp_path / "policy.toml"
    policy.write_text(
        example.read_text().replace(
            "[attestation]\n", '[attestation]\nverifier_url = "https://verifier.example:8400"\n'
        )
    )
    args = argparse.Namespace(policy=policy, verifier=None, pcrs=None, node_id="n1")
    assert _configuration(args) == (
        "https://verifier.example:8400",
        "n1",
        [0, 2, 4, 7, 11, 12, 13, 15],
    )
    args = argparse.Namespace(policy=policy, verifier="http://other:1", pcrs="7", node_id="n1")
    assert _configuration(args) == ("http://other:1", "n1", [7])  # the command line wins


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool,
) -> x509.Certificate:  # fmt: skip
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        ip = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
        builder = builder.add_extension(x509.SubjectAlternativeName([ip]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def test_https_verifier_checked_against_the_given_ca(tmp_path: Path) -> None:
    ca_key, server_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = _certificate("Verifier CA", ca_key, None, ca_key, ca=True)
    server = _certificate("verifier", server_key, ca, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "server.pem").write_bytes(server.public_bytes(pem))
    (tmp_path / "server.key").write_bytes(
        server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    with serving(MiniVerifier(script=[200]), tls) as url:
        trusted = VerifierClient(url, timeout=5, ca_file=tmp_path / "ca.pem")
        assert trusted.post("/v1/nodes/x/nonce", {}) == {"error": "scripted"}
        with pytest.raises(VerifierUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            VerifierClient(url, timeout=5).post("/v1/nodes/x/nonce", {})  # system CAs
        with pytest.raises(AttestationError, match="CA file"):
            VerifierClient(url, timeout=5, ca_file=tmp_path / "absent.pem").post("/v1/x", {})


def test_one_agent_per_state_directory(tmp_path: Path) -> None:
    tpm = TpmDriver(tmp_path, tcti="swtpm:path=/nonexistent")  # never reached: the lock is first
    config = AgentConfig(
        node_id="n", verifier_url="http://127.0.0.1:9", state_dir=tmp_path, pcrs={"sha256": [0]},
        ipe=AuditLogSource(tmp_path / "audit.log", tmp_path),
    )  # fmt: skip
    with (tmp_path / "agent.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(AttestationError, match="another agent is working on"):
            Agent(config, tpm).step()
