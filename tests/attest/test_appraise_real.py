"""The appraisal on a real measured boot of our image (tests/fixtures/attest: OVMF Secure Boot
with our keys, the guest's event log and PCR values from the VM tier). The values are quoted
by a software TPM holding them; the userspace log is systemd-pcrphase's four phase records,
which the in-guest checker does not send (hence no PCR 15 here: its records are the guest's)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from ultraviolet.attest.appraise import appraise
from ultraviolet.attest.bootlog import read_firmware_log
from ultraviolet.attest.model import Appraisal, FindingId, NodeState
from ultraviolet.attest.references import accept_references
from ultraviolet.attest.simulate import SecureBootKeys, SoftwareTpm
from ultraviolet.formats.eventlog_write import userspace_record
from ultraviolet.formats.evidence import Evidence
from ultraviolet.formats.pcr import BOOT_PHASES
from ultraviolet.formats.reference import Reference, parse_reference

FIXTURES = Path(__file__).parent.parent / "fixtures" / "attest"
PCRS = (0, 2, 4, 7, 11, 12, 13)
NONCE = bytes(range(20))
PHASES = b"".join(userspace_record(11, phase, ("sha256",)) for phase in BOOT_PHASES)


@pytest.fixture(scope="module")
def reference() -> Reference:
    return parse_reference((FIXTURES / "reference.json").read_bytes())


@pytest.fixture(scope="module")
def tpm() -> SoftwareTpm:
    """A TPM holding the guest's PCR values."""
    values = json.loads((FIXTURES / "pcrs.json").read_text())["sha256"]
    tpm = SoftwareTpm()
    for pcr, value in values.items():
        tpm.pcrs["sha256"][int(pcr)] = bytes.fromhex(value)
    return tpm


def _evidence(tpm: SoftwareTpm, userspace: bytes = PHASES) -> Evidence:
    message, signature, values = tpm.quote(PCRS, NONCE)
    log = (FIXTURES / "ovmf-secure-boot.eventlog").read_bytes()
    return Evidence(message, signature, values, log, userspace, ())


def _appraise(tpm: SoftwareTpm, evidence: Evidence, reference: Reference) -> Appraisal:
    accepted = accept_references([reference], PCRS)
    return appraise(evidence, ak=tpm.public, nonce=NONCE, accepted=accepted)


def test_real_boot_of_our_image_is_trusted(tpm: SoftwareTpm, reference: Reference) -> None:
    appraisal = _appraise(tpm, _evidence(tpm), reference)
    assert appraisal.state is NodeState.TRUSTED, appraisal.failures
    assert appraisal.release == "container-host 1.0.0"
    pcr11 = appraisal.finding(FindingId.PCR11_REFERENCE)
    assert pcr11 is not None and "profile main, after enter-initrd:leave-initrd:sysinit:ready" in (
        pcr11.message
    )


def test_real_log_facts_are_our_chain_and_keys(reference: Reference) -> None:
    facts = read_firmware_log((FIXTURES / "ovmf-secure-boot.eventlog").read_bytes())
    assert facts.pcr4.applications == (
        reference.boot_loader_authenticode_sha256,
        reference.uki_authenticode_sha256,
    )
    assert facts.pcr4.disguised is None and facts.pcr7.uncovered is None
    assert facts.pcr7.secure_boot == b"\x01"
    for name, role in (("PK", "pk"), ("KEK", "kek"), ("db", "db")):
        database = facts.pcr7.databases[name]
        assert database is not None and database.fingerprints == (reference.certificates[role],)
    assert facts.pcr7.authorities == (reference.certificates["db"],)


def test_real_boot_without_the_phase_records_does_not_replay(
    tpm: SoftwareTpm, reference: Reference
) -> None:
    appraisal = _appraise(tpm, _evidence(tpm, userspace=b""), reference)
    assert {f.id for f in appraisal.failures} == {FindingId.EVENTLOG_REPLAY}


def test_real_boot_against_another_key_set_fails_pcr7_only(
    tpm: SoftwareTpm, reference: Reference
) -> None:
    others = SecureBootKeys.generate("Other fleet").fingerprints()
    foreign = dataclasses.replace(reference, certificates={**reference.certificates, **others})
    appraisal = _appraise(tpm, _evidence(tpm), foreign)
    assert {f.id for f in appraisal.failures} == {FindingId.PCR7_SECURE_BOOT}
    finding = appraisal.finding(FindingId.PCR7_SECURE_BOOT)
    assert finding is not None
    assert all(f"{name} holds" in finding.message for name in ("PK", "KEK", "db"))
    assert "not ours" in finding.message  # the db authority


def test_real_boot_of_another_release_fails_pcr4_and_pcr11(
    tpm: SoftwareTpm, reference: Reference
) -> None:
    other = dataclasses.replace(
        reference,
        version="1.0.1",
        uki_authenticode_sha256=bytes(32),
        pcr11={p: {k: bytes(32) for k in v} for p, v in reference.pcr11.items()},
    )
    appraisal = _appraise(tpm, _evidence(tpm), other)
    assert {f.id for f in appraisal.failures} == {
        FindingId.PCR4_BOOT_CHAIN,
        FindingId.PCR11_REFERENCE,
    }
