"""A booted node attests to the verifier, end to end: the image's own agent (ultraviolet-agent.
service) reports from the guest's TPM (QEMU's swtpm) over QEMU user networking to
`uvctl attest serve` on the host, and the verifier appraises the real evidence against the
build's reference.json.

One boot of the example policy with `[attestation] verifier_url` set (to a placeholder: the
test's URL, http://10.0.2.2:PORT, comes in as the `ultraviolet.verifier-url` credential, as a
fleet would give each site its verifier). The EK is approved the way an operator would from
manufacturing records: its fingerprint read from the TPM before the node first boots. The
checker (action attest:SECONDS) shows the agent's first accepted report (it also carries what
IPE denied during boot: nothing, on a normal boot), waits for the second, then makes its IPE
denials (copies of /usr/bin/true run from writable mounts), then prints each report until two
more were made, and powers off.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.node.test_agent_service import Service, _free_port
from ultraviolet.attest.enrolment import ek_fingerprint
from ultraviolet.attest.store import EvidenceRecord, Store
from ultraviolet.build.node import build_cached_node, example_policy_path
from ultraviolet.formats.reference import Reference, parse_reference
from ultraviolet.formats.tpm import parse_public_2b
from ultraviolet.node.service import VERIFIER_CREDENTIAL
from ultraviolet.node.tpm import TpmDriver
from ultraviolet.policy import load_policy
from ultraviolet.testbed.checker import END_MARKER, GuestReport, checker_smbios, parse_report
from ultraviolet.testbed.swtpm import running_swtpm
from ultraviolet.testbed.vm import BootResult, boot_again
from ultraviolet.tools import ToolsChroot

from .conftest import vm_config

pytestmark = pytest.mark.vm
PLACEHOLDER_URL = "http://verifier.invalid:8080"
WAIT_SECONDS = 150  # per wait in the guest: the first report includes making the AK (TCG)


def attest_policy_text() -> str:
    """The example policy with the agent on (fixed text: the build is cached across runs)."""
    text = example_policy_path().read_text()
    assert "\n[attestation]\n" in text
    return text.replace(
        "\n[attestation]\n",
        f'\n[attestation]\nverifier_url = "{PLACEHOLDER_URL}"\nreport_interval = 10\n',
        1,
    )


@dataclass(frozen=True)
class AttestedBoot:
    boot: BootResult
    guest: GuestReport
    reference: Reference
    service: Service
    fingerprint: str


def _approve_tpm(chroot: ToolsChroot, work: Path) -> str:
    """Make the VM's TPM state before its first boot and read its EK, as a vendor's
    manufacturing record would give it; the state is what QEMU's swtpm then runs on."""
    with running_swtpm(chroot, work / "tpm-manufacture") as swtpm:
        driver = TpmDriver(
            work / "tpm-manufacture" / "driver", tcti=swtpm.tcti, chroot=chroot,
            binds=[swtpm.directory],
        )  # fmt: skip
        fingerprint = ek_fingerprint(parse_public_2b(driver.ek_public()))
    shutil.move(work / "tpm-manufacture" / "state", work / "tpm")
    return fingerprint


def _credential(name: str, value: str) -> str:
    encoded = base64.b64encode(value.encode()).decode("ascii")
    return f"type=11,value=io.systemd.credential.binary:{name}={encoded}"


@pytest.fixture(scope="module")
def attested(
    tools_chroot: ToolsChroot, module_work: Path, accelerator: str
) -> Iterator[AttestedBoot]:
    directory = module_work
    policy_path = directory / "container-host-attest.toml"
    policy_path.write_text(attest_policy_text())
    policy = load_policy(policy_path)
    result, keys = build_cached_node(policy)
    port = _free_port()
    service = Service(f"http://127.0.0.1:{port}", directory)
    service.start()
    try:
        work = directory / "vm"
        work.mkdir()
        fingerprint = _approve_tpm(tools_chroot, work)
        service.call("POST", "/v1/admin/eks", json.dumps({"fingerprint": fingerprint}).encode())
        reference_bytes = result.reference.read_bytes()
        image = policy.image
        service.call("PUT", f"/v1/admin/releases/{image.name}/{image.version}", reference_bytes)
        config = vm_config(
            result.image,
            keys,
            accelerator,
            network=True,
            timeout=420.0 + 3 * WAIT_SECONDS,
            smbios=(
                *checker_smbios(f"attest:{WAIT_SECONDS}"),
                _credential(VERIFIER_CREDENTIAL, f"http://10.0.2.2:{port}"),
            ),
        )
        booted = boot_again(config, re.compile(END_MARKER), work, tools_chroot)
        assert booted.ok, booted.explain()
        guest = parse_report(booted.console())
        yield AttestedBoot(booted, guest, parse_reference(reference_bytes), service, fingerprint)
    finally:
        service.stop()


def _record(raw: str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(raw)
    return record


def _failed(answer: dict[str, Any]) -> list[str]:
    return [f["id"] for f in answer["findings"] if f["severity"] == "fail"]


def _passed(answer: dict[str, Any]) -> set[str]:
    return {f["id"] for f in answer["findings"] if f["severity"] == "pass"}


def test_the_booted_node_is_trusted_as_the_release(attested: AttestedBoot) -> None:
    guest = attested.guest
    raw = guest.get("attest-before-denials")
    assert raw, f"no second report in time; agent log: {guest.get('agent-log-first')}"
    record = _record(raw)
    answer = record["answer"]
    assert record["reports"] >= 2
    assert answer["state"] == "trusted", answer
    assert answer["release"] == "container-host 1.0.0", answer
    # From the guest's real TPM: the firmware and systemd logs replay to the quote, PCR 4 is
    # sd-boot and this UKI, PCR 7 our keys with Secure Boot on, PCR 11 the booted profile.
    assert {
        "ak.known",
        "quote.signature",
        "nonce.fresh",
        "eventlog.replay",
        "userspace-log.replay",
        "pcr4.boot-chain",
        "pcr7.secure-boot",
        "pcr11.reference",
    } <= _passed(answer), answer
    pcr11 = next(f for f in answer["findings"] if f["id"] == "pcr11.reference")
    assert pcr11["details"] == {"profile": "main", "release": "container-host 1.0.0"}
    print(
        f"trusted after {guest.get('attest-uptime')} s of uptime; VM {attested.boot.seconds:.0f} s"
    )


def test_the_first_report_after_boot_is_trusted(attested: AttestedBoot) -> None:
    """The first report also carries every IPE record since boot: a normal boot has none (it
    used to have cfg80211's regulatory.db FIRMWARE denial, which made it untrusted). Read from
    the verifier's own record of every submission, so it does not matter whether the agent's
    first report came before or after the checker started."""
    store = Store.open(str(attested.service.directory / "verifier.db"), migrate=False)
    try:
        with store.session() as session:
            records = session.scalars(select(EvidenceRecord).order_by(EvidenceRecord.id)).all()
    finally:
        store.close()
    assert records, f"no evidence stored; agent log: {attested.guest.get('agent-log-first')}"
    first = records[0]
    failed = [f["id"] for f in json.loads(first.findings) if f["severity"] == "fail"]
    assert (first.state, failed) == ("trusted", []), first.findings


def test_an_ipe_denial_in_the_guest_reaches_the_verifier(attested: AttestedBoot) -> None:
    guest = attested.guest
    assert guest.get("exec-copy:/tmp") == "126"  # the copy was denied (EACCES)
    answers = [_record(raw)["answer"] for raw in guest.all("attest-report") if raw]
    flagged = [a for a in answers if a["state"] == "untrusted"]
    assert flagged, f"no report after the denials: {answers}; agent: {guest.get('agent-log')}"
    answer = flagged[0]
    assert _failed(answer) == ["ipe.denials"], answer
    denial = next(f for f in answer["findings"] if f["id"] == "ipe.denials")
    records = " ".join(denial["details"]["records"])
    assert 'path="/tmp/uvtrue"' in records and "ipe_op=EXECUTE" in records, denial
    # Measured boot still holds: only the denial fails.
    assert {"pcr4.boot-chain", "pcr7.secure-boot", "pcr11.reference"} <= _passed(answer)


def test_the_verifier_knows_the_node_by_its_approved_ek(attested: AttestedBoot) -> None:
    nodes = attested.service.call("GET", "/v1/admin/nodes")["nodes"]
    assert len(nodes) == 1, nodes
    node = attested.service.call("GET", f"/v1/nodes/{nodes[0]['node_id']}")
    assert node["ek_fingerprint"] == attested.fingerprint
    assert node["release"] == "container-host 1.0.0", node
    assert node["state"] in ("trusted", "untrusted"), node
