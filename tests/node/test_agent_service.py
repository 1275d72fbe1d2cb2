"""End to end: the agent on a simulated node (swtpm, real EK and AK, PCRs extended from the logs
of a measured boot of a synthetic release) against the real verifier (`uvctl attest serve`, its
own process, SQLite), over HTTP.

The agent starts while the verifier is down (it backs off), then enrols by credential
activation and attests trusted; an IPE denial in the audit log makes the next report untrusted
with the finding ipe.denials, and the one after (no new records: the cursor was committed) is
trusted again; a reboot of the node (same TPM, new boot) keeps the enrolment; a node booted
with Secure Boot off is untrusted by pcr7.secure-boot. `uvctl agent --once` does the same from
the command line.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ultraviolet.attest.enrolment import ek_fingerprint
from ultraviolet.attest.simulate import (
    SIMULATED_PCRS,
    SecureBootKeys,
    boot_measurements,
    synthetic_release,
)
from ultraviolet.cli import main
from ultraviolet.formats.reference import render_reference
from ultraviolet.formats.tpm import parse_public_2b
from ultraviolet.node.agent import Agent, AgentConfig, Backoff, pcr_selection
from ultraviolet.node.ipe import AuditLogSource
from ultraviolet.node.tpm import TpmDriver
from ultraviolet.testbed.simnode import SimulatedNode, simulated_node
from ultraviolet.testbed.swtpm import Swtpm
from ultraviolet.tools import Spawned, ToolsChroot, spawn_host

pytestmark = pytest.mark.oracle

TOKEN = "node-agent-test-admin-token"
DENIAL = (
    "type=1420 msg=audit(1732350000.123:777): ipe_op=EXECUTE ipe_hook=BPRM_CHECK enforcing=1 "
    'pid=901 comm="sh" path="/tmp/uvtrue" dev="tmpfs" ino=12 rule="DEFAULT action=DENY"\n'
)
OTHER_RECORD = "type=1300 msg=audit(1732350000.120:776): arch=c000003e syscall=59 success=no\n"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Service:
    url: str
    directory: Path
    process: Spawned | None = None

    def start(self) -> None:
        uvctl = Path(sys.executable).with_name("uvctl")
        (self.directory / "token").write_text(TOKEN)
        argv = [
            str(uvctl), "attest", "serve", "--database", str(self.directory / "verifier.db"),
            "--listen", self.url.removeprefix("http://"),
            "--admin-token-file", str(self.directory / "token"), "--pcrs", "0,2,4,7,11",
        ]  # fmt: skip
        self.process = spawn_host(argv, log=self.directory / "verifier.log")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/v1/fleet", timeout=2).close()
                return
            except OSError:
                assert self.process.running(), (self.directory / "verifier.log").read_text()
                time.sleep(0.2)
        raise AssertionError("the verifier did not come up")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def call(self, method: str, path: str, body: bytes | None = None) -> Any:
        request = urllib.request.Request(
            self.url + path,
            data=body,
            method=method,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = response.read()
        return json.loads(payload) if payload else None


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    running = Service(f"http://127.0.0.1:{_free_port()}", tmp_path)
    try:
        yield running
    finally:
        running.stop()


def _driver_for(chroot: ToolsChroot) -> Any:
    def make(swtpm: Swtpm, state: Path) -> TpmDriver:
        return TpmDriver(state, tcti=swtpm.tcti, chroot=chroot, binds=[swtpm.directory])

    return make


def _agent(node: SimulatedNode[TpmDriver], service: Service, sleeps: list[float]) -> Agent:
    config = AgentConfig(
        node_id="node-1",
        verifier_url=service.url,
        state_dir=node.state_dir,
        pcrs=pcr_selection(SIMULATED_PCRS),
        ipe=AuditLogSource(node.directory / "audit.log", node.state_dir),
        interval=0.0,
        firmware_log=node.firmware_log_path,
        userspace_log=node.userspace_log_path,
        backoff=Backoff(base=0.5, cap=2.0),
        http_timeout=30.0,
    )
    return Agent(config, node.tpm, sleep=sleeps.append)


def test_agent_enrols_and_attests_against_the_verifier(
    tools_chroot: ToolsChroot, tmp_path: Path, service: Service
) -> None:
    keys = SecureBootKeys.generate()
    release = synthetic_release("uvnode", "1.0", keys)
    boot = boot_measurements(release)
    with simulated_node(
        tools_chroot, tmp_path / "node", _driver_for(tools_chroot), boot.firmware_log,
        boot.userspace,
    ) as node:  # fmt: skip
        sleeps: list[float] = []
        agent = _agent(node, service, sleeps)

        # The verifier is down: the agent backs off (and the first wait starts the verifier,
        # which then still refuses the node until its EK is approved and a release exists).
        def first_wait(delay: float) -> None:
            sleeps.append(delay)
            if service.process is None:
                service.start()
                fingerprint = ek_fingerprint(parse_public_2b(node.tpm.ek_public()))
                service.call(
                    "POST", "/v1/admin/eks", json.dumps({"fingerprint": fingerprint}).encode()
                )
                reference = render_reference(release.reference).encode()
                service.call("PUT", "/v1/admin/releases/uvnode/1.0", reference)

        agent.sleep = first_wait
        agent.run(cycles=1)
        assert len(sleeps) == 1 and 0 <= sleeps[0] <= 1.0  # one refused connection, jittered
        status = service.call("GET", "/v1/nodes/node-1")
        assert status["state"] == "trusted", status
        assert json.loads((node.state_dir / "enrolment.json").read_text())["node_id"] == "node-1"

        # An IPE denial since the last report: untrusted, by that finding.
        (node.directory / "audit.log").write_text(OTHER_RECORD + DENIAL)
        answer = agent.step()
        assert answer["state"] == "untrusted"
        failed = [f["id"] for f in answer["findings"] if f["severity"] == "fail"]
        assert failed == ["ipe.denials"], answer
        # Reported once: the cursor moved past it.
        assert agent.step()["state"] == "trusted"

        # Reboot (TPM reset: the AK's saved context is stale and is loaded again), same AK.
        ak_name = node.tpm.ak_public().name()
        node.reboot()
        assert agent.enrolled()
        assert agent.step()["state"] == "trusted"
        assert node.tpm.ak_public().name() == ak_name

        # Secure Boot off: PCR 7 says so.
        node.reboot(firmware_log=boot_measurements(release, secure_boot=False).firmware_log)
        answer = agent.step()
        assert answer["state"] == "untrusted"
        failed = [f["id"] for f in answer["findings"] if f["severity"] == "fail"]
        assert "pcr7.secure-boot" in failed, answer


def test_uvctl_agent_once(
    tools_chroot: ToolsChroot,
    tmp_path: Path,
    service: Service,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The command line: `uvctl agent --once` enrols and reports, here with the tools chroot's
    tpm2-tools against the simulated node's swtpm; the IPE records come from an audit.log."""
    keys = SecureBootKeys.generate()
    release = synthetic_release("uvnode", "2.0", keys)
    boot = boot_measurements(release, profile=1)  # the factory-reset profile: also accepted
    service.start()
    reference = render_reference(release.reference).encode()
    service.call("PUT", "/v1/admin/releases/uvnode/2.0", reference)
    with simulated_node(
        tools_chroot, tmp_path / "node", _driver_for(tools_chroot), boot.firmware_log,
        boot.userspace,
    ) as node:  # fmt: skip
        fingerprint = ek_fingerprint(parse_public_2b(node.tpm.ek_public()))
        assert node.swtpm is not None
        arguments = [
            "agent", "--once", "--tools-chroot", "--tcti", node.swtpm.tcti,
            "--verifier", service.url, "--node-id", "cli-node", "--pcrs", "0,2,4,7,11",
            "--state-dir", str(node.state_dir), "--firmware-log", str(node.firmware_log_path),
            "--userspace-log", str(node.userspace_log_path),
            "--ipe-audit-log", str(node.directory / "audit.log"),
        ]  # fmt: skip
        assert main(arguments) == 2  # the EK is not approved yet: a clear error
        assert "enrol.ek-not-approved" in capsys.readouterr().err
        service.call("POST", "/v1/admin/eks", json.dumps({"fingerprint": fingerprint}).encode())
        assert main(arguments) == 0
        assert capsys.readouterr().out.strip() == "cli-node: trusted"
        assert service.call("GET", "/v1/nodes/cli-node")["state"] == "trusted"


def _failed(answer: dict[str, Any]) -> set[str]:
    return {f["id"] for f in answer["findings"] if f["severity"] == "fail"}


def test_evidence_from_real_tpms_that_must_be_refused(
    tools_chroot: ToolsChroot, tmp_path: Path, service: Service
) -> None:
    """The issue's rejections, each with genuine TPM quotes: a reused nonce, a quote by another
    TPM's AK, a log that is not what the TPM measured, a UKI of a release not accepted."""
    keys = SecureBootKeys.generate()
    release = synthetic_release("uvnode", "1.0", keys)
    boot = boot_measurements(release)
    service.start()
    service.call(
        "PUT", "/v1/admin/releases/uvnode/1.0", render_reference(release.reference).encode()
    )
    make = _driver_for(tools_chroot)
    with simulated_node(
        tools_chroot, tmp_path / "node", make, boot.firmware_log, boot.userspace
    ) as node, simulated_node(
        tools_chroot, tmp_path / "other", make, boot.firmware_log, boot.userspace
    ) as other:  # fmt: skip
        fingerprint = ek_fingerprint(parse_public_2b(node.tpm.ek_public()))
        service.call("POST", "/v1/admin/eks", json.dumps({"fingerprint": fingerprint}).encode())
        agent = _agent(node, service, [])
        assert agent.step()["state"] == "trusted"
        evidence_path = "/v1/nodes/node-1/evidence"

        # The same nonce twice: the second is refused by nonce.fresh.
        nonce = bytes.fromhex(agent.client.post("/v1/nodes/node-1/nonce", {})["nonce"])
        evidence, _ = agent.collect_evidence(nonce)
        body = {"nonce": nonce.hex(), "evidence": evidence.to_json()}
        assert agent.client.post(evidence_path, body)["state"] == "trusted"
        assert "nonce.fresh" in _failed(agent.client.post(evidence_path, body))

        # Another TPM's AK (same boot, fresh nonce): its quote is not the enrolled AK's.
        nonce = bytes.fromhex(agent.client.post("/v1/nodes/node-1/nonce", {})["nonce"])
        foreign = _agent(other, service, [])
        evidence, _ = foreign.collect_evidence(nonce)
        answer = agent.client.post(
            evidence_path, {"nonce": nonce.hex(), "evidence": evidence.to_json()}
        )
        assert answer["state"] == "untrusted"
        assert _failed(answer) & {"quote.signature", "ak.known"}, answer

        # The TPM measured another UKI than the log the node sends says.
        node.reboot(firmware_log=boot_measurements(release, uki=b"\x66" * 32).firmware_log)
        node.firmware_log_path.write_bytes(boot.firmware_log)
        answer = agent.step()
        assert "eventlog.replay" in _failed(answer), answer

        # A release that is not accepted: PCR 11 (and PCR 4's UKI) match no reference.
        unknown = boot_measurements(synthetic_release("uvnode", "6.6", keys))
        node.reboot(firmware_log=unknown.firmware_log, userspace_log=unknown.userspace)
        answer = agent.step()
        assert "pcr11.reference" in _failed(answer), answer

        # Back on the accepted boot, trusted again.
        node.reboot(firmware_log=boot.firmware_log, userspace_log=boot.userspace)
        assert agent.step()["state"] == "trusted"
