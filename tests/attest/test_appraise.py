"""The appraisal on simulated nodes (attest/simulate.py): a software TPM extends an OVMF-like
measured boot of a synthetic release and quotes it with an in-memory RSA AK. Genuine evidence
is trusted; each forgery is untrusted with the finding id that names it, and checks resting on
what the forgery broke are skipped rather than passed."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from ultraviolet.attest import bootlog
from ultraviolet.attest.appraise import appraise
from ultraviolet.attest.bootlog import cache_statistics, clear_caches
from ultraviolet.attest.model import Appraisal, FindingId, NodeState, Severity
from ultraviolet.attest.references import (
    AcceptedReleases,
    ReferencesError,
    accept_references,
    load_accepted,
)
from ultraviolet.attest.simulate import (
    BANKS,
    Boot,
    SecureBootKeys,
    SimulatedRelease,
    SoftwareTpm,
    boot_measurements,
    simulated_evidence,
    synthetic_release,
)
from ultraviolet.formats import efivar
from ultraviolet.formats import eventlog as ev
from ultraviolet.formats.eventlog_write import EventRecord, measured, userspace_record
from ultraviolet.formats.evidence import Evidence, IpeEvent
from ultraviolet.formats.reference import ReferenceError, render_reference

POLICY_PCRS = (0, 2, 4, 7, 11, 12, 13, 15)
NONCE = bytes.fromhex("5eed0f00d00dfeed00112233445566778899aabb")
DENIAL = (
    'ipe_op=EXECUTE ipe_hook=BPRM_CHECK enforcing=1 pid=4242 comm="sh" path="/tmp/x" '
    'dev="tmpfs" ino=17 rule="DEFAULT action=DENY"'
)
ALLOWED = DENIAL.replace("action=DENY", "action=ALLOW")


@pytest.fixture(scope="module")
def keys() -> SecureBootKeys:
    return SecureBootKeys.generate()


@pytest.fixture(scope="module")
def release(keys: SecureBootKeys) -> SimulatedRelease:
    return synthetic_release("host", "1.0", keys)


@pytest.fixture(scope="module")
def next_release(keys: SecureBootKeys) -> SimulatedRelease:
    return synthetic_release("host", "1.1", keys)


@pytest.fixture(scope="module")
def tpm() -> SoftwareTpm:
    return SoftwareTpm()


@pytest.fixture(scope="module")
def accepted(release: SimulatedRelease) -> AcceptedReleases:
    return accept_references([release.reference], POLICY_PCRS)


def _appraise(
    evidence: Evidence, tpm: SoftwareTpm, accepted: AcceptedReleases, nonce: bytes = NONCE
) -> Appraisal:
    return appraise(evidence, ak=tpm.public, nonce=nonce, accepted=accepted)


def _severities(appraisal: Appraisal) -> dict[FindingId, Severity]:
    assert [f.id for f in appraisal.findings] == list(FindingId)  # one finding per id
    return {f.id: f.severity for f in appraisal.findings}


def _failed(appraisal: Appraisal) -> set[FindingId]:
    assert appraisal.state is NodeState.UNTRUSTED
    return {f.id for f in appraisal.failures}


def _message(appraisal: Appraisal, finding_id: FindingId) -> str:
    finding = appraisal.finding(finding_id)
    assert finding is not None
    return finding.message


def test_genuine_evidence_is_trusted_with_its_release(
    tpm: SoftwareTpm, release: SimulatedRelease, accepted: AcceptedReleases
) -> None:
    boot = boot_measurements(release)
    events = len(ev.parse_event_log(boot.firmware_log).events)
    assert 45 <= events + len(ev.parse_userspace_log(boot.userspace)) <= 100
    appraisal = _appraise(simulated_evidence(tpm, boot, NONCE), tpm, accepted)
    assert appraisal.state is NodeState.TRUSTED, appraisal.failures
    assert set(_severities(appraisal).values()) == {Severity.PASS}
    assert appraisal.release == "host 1.0"
    assert "profile main" in _message(appraisal, FindingId.PCR11_REFERENCE)


def test_rolling_update_accepts_either_release_and_records_which(
    tpm: SoftwareTpm, release: SimulatedRelease, next_release: SimulatedRelease
) -> None:
    both = load_accepted(
        [render_reference(r.reference).encode() for r in (release, next_release)], POLICY_PCRS
    )
    for booted, profile in ((release, 0), (next_release, 0), (next_release, 1)):
        evidence = simulated_evidence(tpm, boot_measurements(booted, profile=profile), NONCE)
        appraisal = _appraise(evidence, tpm, both)
        assert appraisal.state is NodeState.TRUSTED, appraisal.failures
        assert appraisal.release == f"host {booted.reference.version}"
    assert "factory-reset" in _message(appraisal, FindingId.PCR11_REFERENCE)


def test_reused_nonce_fails_nonce_fresh_only(
    tpm: SoftwareTpm, release: SimulatedRelease, accepted: AcceptedReleases
) -> None:
    old = simulated_evidence(tpm, boot_measurements(release), NONCE)
    appraisal = _appraise(old, tpm, accepted, nonce=b"\x01" * 20)
    assert _failed(appraisal) == {FindingId.NONCE_FRESH}
    assert NONCE.hex() in _message(appraisal, FindingId.NONCE_FRESH)


def test_quote_by_another_ak_fails_ak_known(
    tpm: SoftwareTpm, release: SimulatedRelease, accepted: AcceptedReleases
) -> None:
    other = SoftwareTpm()
    evidence = simulated_evidence(other, boot_measurements(release), NONCE)
    appraisal = _appraise(evidence, tpm, accepted)
    assert _failed(appraisal) == {FindingId.AK_KNOWN}
    severities = _severities(appraisal)
    assert severities[FindingId.QUOTE_SIGNATURE] is Severity.SKIP
    assert severities[FindingId.PCR11_REFERENCE] is Severity.SKIP  # nothing rests on it
    assert severities[FindingId.IPE_DENIALS] is Severity.PASS


def test_ecdsa_aks_are_trusted_and_another_key_fails_both_signature_ids(
    release: SimulatedRelease, accepted: AcceptedReleases
) -> None:
    """An ECDSA signature cannot show whether another key made it or the quote was altered:
    both ids fail. A signature of another scheme than the AK's is another key's."""
    enrolled = SoftwareTpm(ec.generate_private_key(ec.SECP256R1()))
    other = SoftwareTpm(ec.generate_private_key(ec.SECP256R1()))
    boot = boot_measurements(release)
    appraisal = _appraise(simulated_evidence(enrolled, boot, NONCE), enrolled, accepted)
    assert appraisal.state is NodeState.TRUSTED, appraisal.failures
    appraisal = _appraise(simulated_evidence(other, boot, NONCE), enrolled, accepted)
    assert _failed(appraisal) == {FindingId.AK_KNOWN, FindingId.QUOTE_SIGNATURE}
    assert "cannot tell which" in _message(appraisal, FindingId.AK_KNOWN)
    rsa_quote = simulated_evidence(SoftwareTpm(), boot, NONCE)
    appraisal = _appraise(rsa_quote, enrolled, accepted)
    assert _failed(appraisal) == {FindingId.AK_KNOWN}
    assert "signed by another key" in _message(appraisal, FindingId.AK_KNOWN)


def test_quote_altered_after_signing_fails_quote_signature(
    tpm: SoftwareTpm, release: SimulatedRelease, accepted: AcceptedReleases
) -> None:
    evidence = simulated_evidence(tpm, boot_measurements(release), NONCE)
    altered = bytearray(evidence.quote)
    altered[-1] ^= 1  # the pcrDigest's last byte
    appraisal = _appraise(dataclasses.replace(evidence, quote=bytes(altered)), tpm, accepted)
    assert _failed(appraisal) == {FindingId.QUOTE_SIGNATURE}
    assert "altered" in _message(appraisal, FindingId.QUOTE_SIGNATURE)


def test_pcr_values_other_than_quoted_fail_pcr_digest(
    tpm: SoftwareTpm, release: SimulatedRelease, accepted: AcceptedReleases
) -> None:
    evidence = simulated_evidence(tpm, boot_measurements(release), NONCE)
    values = {bank: dict(pcrs) for bank, pcrs in evidence.pcrs.items()}
    values["sha256"][7] = bytes(32)
    appraisal = _appraise(dataclasses.replace(evidence, pcrs=values), tpm, accepted)
    assert _failed(appraisal) == {FindingId.QUOTE_PCR_DIGEST}
    assert _severities(appraisal)[FindingId.PCR7_SECURE_BOOT] is Severity.SKIP
    values = {bank: dict(pcrs) for bank, pcrs in evidence.pcrs.items()}
    values["sha256"][9] = bytes(32)  # a value the quote does not cover
    appraisal = _appraise(dataclasses.replace(evidence, pcrs=values), tpm, accepted)
    assert "sha256:9" in _message(appraisal, FindingId.QUOTE_PCR_DIGEST)


def test_quote_without_a_policy_pcr_fails_selection(
    tpm: SoftwareTpm, release: SimulatedRelease, accepted: AcceptedReleases
) -> None:
    tpm.reset()
    tpm.run(boot_measurements(release))
    message, signature, values = tpm.quote([0, 2, 4, 11, 12, 13, 15], NONCE)  # no PCR 7
    boot = boot_measurements(release)
    evidence = Evidence(message, signature, values, boot.firmware_log, boot.userspace, ())
    appraisal = _appraise(evidence, tpm, accepted)
    assert _failed(appraisal) == {FindingId.QUOTE_PCR_SELECTION}
    assert "[7]" in _message(appraisal, FindingId.QUOTE_PCR_SELECTION)
    assert "not quoted" in _message(appraisal, FindingId.PCR7_SECURE_BOOT)


def _forged(
    boot: Boot, pcr: int, event_type: int, change: Callable[[EventRecord], EventRecord]
) -> Boot:
    """The same boot with the first matching firmware record changed in the log only."""
    records = list(boot.firmware)
    index = next(i for i, r in enumerate(records) if r.pcr == pcr and r.event_type == event_type)
    records[index] = change(records[index])
    return dataclasses.replace(boot, firmware=tuple(records))


def _evidence_with_log(tpm: SoftwareTpm, extended: Boot, logged: Boot) -> Evidence:
    """The TPM extended `extended`; the node sends the logs of `logged`."""
    evidence = simulated_evidence(tpm, extended, NONCE)
    return dataclasses.replace(
        evidence, firmware_log=logged.firmware_log, userspace_log=logged.userspace
    )


def test_forged_log_entry_hiding_a_rogue_boot_loader_fails_replay(
    tpm: SoftwareTpm, release: SimulatedRelease, accepted: AcceptedReleases
) -> None:
    rogue = boot_measurements(release, boot_loader=hashlib.sha256(b"rogue loader").digest())
    evidence = _evidence_with_log(tpm, rogue, boot_measurements(release))
    appraisal = _appraise(evidence, tpm, accepted)
    assert _failed(appraisal) == {FindingId.EVENTLOG_REPLAY}
    assert "sha256 PCR 4:" in _message(appraisal, FindingId.EVENTLOG_REPLAY)
    pcr4_events = sum(1 for e in ev.parse_event_log(evidence.firmware_log).events if e.pcr == 4)
    assert f"PCR 4: {pcr4_events} firmware log events replay to" in _message(
        appraisal, FindingId.EVENTLOG_REPLAY
    )
    assert _severities(appraisal)[FindingId.PCR4_BOOT_CHAIN] is Severity.SKIP
    # Without the forgery, the rogue loader itself is named in PCR 4.
    appraisal = _appraise(simulated_evidence(tpm, rogue, NONCE), tpm, accepted)
    assert _failed(appraisal) == {FindingId.PCR4_BOOT_CHAIN}
    assert "(unknown image)" in _message(appraisal, FindingId.PCR4_BOOT_CHAIN)


def test_only_quoted_pcrs_are_replayed_and_each_pcr_set_is_replayed_on_its_own(
    tpm: SoftwareTpm, release: SimulatedRelease, accepted: AcceptedReleases
) -> None:
    """A log event forged in PCR 1 (outside the policy) is not judged where the quote leaves
    PCR 1 out, and is caught where the quote carries it, also after the same logs were
    replayed for a quote without it (the replay is kept per log and quoted PCR set)."""
    boot = boot_measurements(release, machine=5150)
    forged = measured(1, ev.EV_EFI_VARIABLE_BOOT, b"forged boot option", BANKS)
    logged = dataclasses.replace(boot, firmware=(*boot.firmware, forged))
    clear_caches()
    policy_only = simulated_evidence(tpm, boot, NONCE, pcrs=POLICY_PCRS)
    policy_only = dataclasses.replace(policy_only, firmware_log=logged.firmware_log)
    assert _appraise(policy_only, tpm, accepted).state is NodeState.TRUSTED
    appraisal = _appraise(_evidence_with_log(tpm, boot, logged), tpm, accepted)
    assert _failed(appraisal) == {FindingId.EVENTLOG_REPLAY}
    assert "sha256 PCR 1:" in _message(appraisal, FindingId.EVENTLOG_REPLAY)
    genuine = simulated_evidence(tpm, boot, NONCE, pcrs=POLICY_PCRS)
    assert _appraise(genuine, tpm, accepted).state is NodeState.TRUSTED
    every_pcr = simulated_evidence(tpm, boot, NONCE)  # the same logs, PCRs 0-7 quoted
    assert _appraise(every_pcr, tpm, accepted).state is NodeState.TRUSTED


def test_forged_userspace_log_fails_userspace_replay(
    tpm: SoftwareTpm, release: SimulatedRelease, accepted: AcceptedReleases
) -> None:
    boot = boot_measurements(release)
    logged = dataclasses.replace(boot, userspace=boot.userspace + userspace_record(15, "x", BANKS))
    appraisal = _appraise(_evidence_with_log(tpm, boot, logged), tpm, accepted)
    assert _failed(appraisal) == {FindingId.USERSPACE_LOG_REPLAY}
    assert "sha256 PCR 15" in _message(appraisal, FindingId.USERSPACE_LOG_REPLAY)


def test_pcr11_of_a_different_uki_fails(
    tpm: SoftwareTpm,
    release: SimulatedRelease,
    next_release: SimulatedRelease,
    accepted: AcceptedReleases,
) -> None:
    """Only release 1.0 is accepted; the node booted 1.1: its UKI in PCR 4, its PCR 11."""
    appraisal = _appraise(
        simulated_evidence(tpm, boot_measurements(next_release), NONCE), tpm, accepted
    )
    assert _failed(appraisal) == {FindingId.PCR4_BOOT_CHAIN, FindingId.PCR11_REFERENCE}
    assert "of releases host 1.0" in _message(appraisal, FindingId.PCR11_REFERENCE)
    # PCR 4 claims 1.0's UKI (a UKI with 1.0's Authenticode digest) but the stub measured 1.1.
    boot = boot_measurements(next_release, uki=release.reference.uki_authenticode_sha256)
    boot = dataclasses.replace(
        boot,
        firmware=tuple(r for r in boot.firmware if r.pcr != 4)
        + tuple(r for r in boot_measurements(release).firmware if r.pcr == 4),
    )
    appraisal = _appraise(simulated_evidence(tpm, boot, NONCE), tpm, accepted)
    assert _failed(appraisal) == {FindingId.PCR11_REFERENCE}


def test_pcr11_of_an_accepted_release_other_than_the_booted_uki_fails(
    tpm: SoftwareTpm, release: SimulatedRelease, next_release: SimulatedRelease
) -> None:
    both = accept_references([release.reference, next_release.reference], POLICY_PCRS)
    boot = boot_measurements(next_release, uki=release.reference.uki_authenticode_sha256)
    appraisal = _appraise(simulated_evidence(tpm, boot, NONCE), tpm, both)
    assert _failed(appraisal) == {FindingId.PCR11_REFERENCE}
    assert "but PCR 4 booted the UKI" in _message(appraisal, FindingId.PCR11_REFERENCE)


def test_pcr11_before_the_final_phase_fails(
    tpm: SoftwareTpm, release: SimulatedRelease, accepted: AcceptedReleases
) -> None:
    boot = boot_measurements(release)
    records = ev.parse_userspace_log(boot.userspace)
    last = records[-1]
    assert last.string == "ready"
    boot = dataclasses.replace(boot, userspace=boot.userspace[: last.offset])
    appraisal = _appraise(simulated_evidence(tpm, boot, NONCE), tpm, accepted)
    assert _failed(appraisal) == {FindingId.PCR11_REFERENCE}
    assert "host 1.0 main at enter-initrd:leave-initrd:sysinit" in _message(
        appraisal, FindingId.PCR11_REFERENCE
    )


def test_secure_boot_off_fails_pcr7(
    tpm: SoftwareTpm, release: SimulatedRelease, accepted: AcceptedReleases
) -> None:
    boot = boot_measurements(release, secure_boot=False)
    appraisal = _appraise(simulated_evidence(tpm, boot, NONCE), tpm, accepted)
    assert _failed(appraisal) == {FindingId.PCR7_SECURE_BOOT}
    message = _message(appraisal, FindingId.PCR7_SECURE_BOOT)
    assert "SecureBoot is 00, expected 01" in message
    assert "no db authority was measured" in message


def test_secure_boot_flag_forged_in_the_log_fails_pcr7(
    tpm: SoftwareTpm, release: SimulatedRelease, accepted: AcceptedReleases
) -> None:
    """The log claims SecureBoot=01 but keeps the digest of the 00 the TPM got: the PCR
    replays, and the event's data is not what its digest covers."""
    off = boot_measurements(release, secure_boot=False)

    def claim_on(record: EventRecord) -> EventRecord:
        data = efivar.uefi_variable_data(efivar.EFI_GLOBAL_VARIABLE, "SecureBoot", b"\x01")
        return dataclasses.replace(record, data=data)

    logged = _forged(off, 7, ev.EV_EFI_VARIABLE_DRIVER_CONFIG, claim_on)
    appraisal = _appraise(_evidence_with_log(tpm, off, logged), tpm, accepted)
    assert _failed(appraisal) == {FindingId.PCR7_SECURE_BOOT}
    assert "is not the hash of its data" in _message(appraisal, FindingId.PCR7_SECURE_BOOT)


def test_foreign_db_and_kek_fail_pcr7(
    tpm: SoftwareTpm, release: SimulatedRelease, accepted: AcceptedReleases
) -> None:
    foreign = SecureBootKeys.generate("Other")
    mixed = dataclasses.replace(
        release, keys=dataclasses.replace(release.keys, kek=foreign.kek, db=foreign.db)
    )
    appraisal = _appraise(simulated_evidence(tpm, boot_measurements(mixed), NONCE), tpm, accepted)
    assert _failed(appraisal) == {FindingId.PCR7_SECURE_BOOT}
    message = _message(appraisal, FindingId.PCR7_SECURE_BOOT)
    assert "KEK holds" in message and "db holds" in message and "not ours" in message
    assert "PK holds" not in message


def test_image_disguised_as_an_action_in_pcr4_fails(
    tpm: SoftwareTpm, release: SimulatedRelease, accepted: AcceptedReleases
) -> None:
    boot = boot_measurements(release)
    rogue = measured(4, ev.EV_EFI_ACTION, b"Calling EFI Application from Boot Option", BANKS)
    rogue = dataclasses.replace(rogue, digests={b: hashlib.new(b, b"shim").digest() for b in BANKS})
    boot = dataclasses.replace(boot, firmware=(*boot.firmware, rogue))
    appraisal = _appraise(simulated_evidence(tpm, boot, NONCE), tpm, accepted)
    assert _failed(appraisal) == {FindingId.PCR4_BOOT_CHAIN}
    assert "EV_EFI_ACTION" in _message(appraisal, FindingId.PCR4_BOOT_CHAIN)


@pytest.mark.parametrize(
    ("records", "failed"),
    [
        ((), False),
        ((ALLOWED,), False),
        ((ALLOWED, DENIAL), True),
        (("ipe_op=EXECUTE something unreadable",), True),  # fail closed
    ],
)
def test_ipe_denials(
    tpm: SoftwareTpm,
    release: SimulatedRelease,
    accepted: AcceptedReleases,
    records: tuple[str, ...],
    failed: bool,
) -> None:
    events = [
        IpeEvent(f"audit(1700000000.{n:03d}:{n})", record) for n, record in enumerate(records)
    ]
    evidence = simulated_evidence(tpm, boot_measurements(release), NONCE, ipe_events=events)
    appraisal = _appraise(evidence, tpm, accepted)
    if failed:
        assert _failed(appraisal) == {FindingId.IPE_DENIALS}
        assert "1 IPE denial(s)" in _message(appraisal, FindingId.IPE_DENIALS)
    else:
        assert appraisal.state is NodeState.TRUSTED


def test_malformed_binary_evidence_fails_evidence_format(
    tpm: SoftwareTpm, release: SimulatedRelease, accepted: AcceptedReleases
) -> None:
    evidence = simulated_evidence(tpm, boot_measurements(release), NONCE)
    broken = [
        dataclasses.replace(evidence, quote=b"\xff\x54"),
        dataclasses.replace(evidence, signature=b""),
        dataclasses.replace(evidence, firmware_log=b"\0" * 7),
        dataclasses.replace(evidence, userspace_log=b"{}"),
    ]
    for malformed in broken:
        appraisal = _appraise(malformed, tpm, accepted)
        assert _failed(appraisal) == {FindingId.EVIDENCE_FORMAT}
        severities = _severities(appraisal)
        assert severities[FindingId.PCR11_REFERENCE] is Severity.SKIP


def test_load_accepted_refuses_what_cannot_be_appraised(release: SimulatedRelease) -> None:
    old = dataclasses.replace(
        release.reference, boot_loader_file=None, boot_loader_authenticode_sha256=None
    )
    with pytest.raises(ReferencesError, match=r"format 1.*rebuild the release"):
        load_accepted([render_reference(old).encode()], POLICY_PCRS)
    with pytest.raises(ReferencesError, match="no accepted release"):
        load_accepted([], POLICY_PCRS)
    with pytest.raises(ReferencesError, match="PCR indices 0-23"):
        load_accepted([render_reference(release.reference).encode()], [24])
    with pytest.raises(ReferenceError):
        load_accepted([b"{}"], POLICY_PCRS)


def test_logs_are_read_once_per_content_and_decide_the_same(
    tpm: SoftwareTpm, release: SimulatedRelease, accepted: AcceptedReleases
) -> None:
    """A node re-attesting with the same logs is served from the log cache: the same
    findings; a log differing in one byte is read afresh."""
    boot = boot_measurements(release, machine=4242)
    clear_caches()
    first = _appraise(simulated_evidence(tpm, boot, NONCE), tpm, accepted)
    second = _appraise(simulated_evidence(tpm, boot, NONCE), tpm, accepted)
    assert first == second and first.state is NodeState.TRUSTED
    hits, misses = cache_statistics()["firmware"]
    assert hits >= 1
    other = _appraise(
        simulated_evidence(tpm, boot_measurements(release, machine=7), NONCE), tpm, accepted
    )
    assert other.state is NodeState.TRUSTED
    assert cache_statistics()["firmware"] == (hits, misses + 1)


@pytest.fixture(scope="module")
def genuine(tpm: SoftwareTpm, release: SimulatedRelease) -> Evidence:
    return simulated_evidence(tpm, boot_measurements(release), NONCE)


@settings(max_examples=200)
@given(
    st.sampled_from(["quote", "signature", "firmware_log", "userspace_log"]),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 255)), min_size=1, max_size=4),
)
def test_mutated_evidence_never_raises_and_a_changed_quote_is_never_trusted(
    tpm: SoftwareTpm,
    accepted: AcceptedReleases,
    genuine: Evidence,
    part: str,
    flips: list[tuple[int, int]],
) -> None:
    data = bytearray(getattr(genuine, part))
    for offset, mask in flips:
        data[offset % len(data)] ^= mask
    evidence = dataclasses.replace(genuine, **{part: bytes(data)})  # type: ignore[arg-type]
    appraisal = _appraise(evidence, tpm, accepted)
    assert [f.id for f in appraisal.findings] == list(FindingId)
    if part in ("quote", "signature") and bytes(data) != getattr(genuine, part):
        assert appraisal.state is NodeState.UNTRUSTED


@settings(max_examples=100)
@given(
    st.dictionaries(
        st.sampled_from(["sha1", "sha256", "sha384"]),
        st.dictionaries(st.integers(0, 30), st.binary(max_size=70), max_size=4),
        max_size=2,
    )
)
def test_any_pcr_values_never_raise_and_are_never_trusted(
    tpm: SoftwareTpm,
    accepted: AcceptedReleases,
    genuine: Evidence,
    pcrs: dict[str, dict[int, bytes]],
) -> None:
    appraisal = _appraise(dataclasses.replace(genuine, pcrs=pcrs), tpm, accepted)
    assert appraisal.state is NodeState.UNTRUSTED
    assert FindingId.QUOTE_PCR_DIGEST in {f.id for f in appraisal.failures}


def _facts_or_error(read: Callable[[bytes, bytes], object], data: bytes) -> object:
    try:
        return read(b"key", data)
    except ev.EventLogError as exc:
        return ("EventLogError", str(exc))


def _assert_fast_facts_are_checked(data: bytes) -> None:
    """What the appraisal reads of a firmware log (one-pass scan where it can) equals what the
    checked reader (parse_event_log, replay, Event.content, parse_signature_lists) gives."""
    fast = _facts_or_error(bootlog._firmware_facts, data)
    assert fast == _facts_or_error(bootlog._checked_firmware_facts, data)


def test_firmware_facts_of_the_fast_scan_equal_the_checked_reader(
    release: SimulatedRelease, next_release: SimulatedRelease, keys: SecureBootKeys
) -> None:
    boots = [boot_measurements(release, machine=machine) for machine in range(3)]
    boots += [
        boot_measurements(next_release, secure_boot=False),
        boot_measurements(synthetic_release("other", "2", SecureBootKeys.generate())),
        _forged(
            boots[0],
            7,
            ev.EV_EFI_VARIABLE_DRIVER_CONFIG,
            lambda r: measured(r.pcr, r.event_type, r.data[:-1] + b"\x00", BANKS, digest_of=r.data),
        ),
    ]
    for boot in boots:
        assert bootlog.scan_firmware_log(boot.firmware_log, "sha256", (4, 7)) is not None
        _assert_fast_facts_are_checked(boot.firmware_log)
    for path in sorted(Path("/work/shared/testdata/eventlogs").glob("*_eventlog")):
        _assert_fast_facts_are_checked(path.read_bytes())


@settings(max_examples=200)
@given(
    st.integers(0, 5),
    st.lists(st.tuples(st.integers(0, 20_000), st.integers(0, 255)), min_size=1, max_size=3),
)
def test_firmware_facts_of_mutated_logs_equal_the_checked_reader(
    release: SimulatedRelease, machine: int, mutations: list[tuple[int, int]]
) -> None:
    data = bytearray(boot_measurements(release, machine=machine).firmware_log)
    for offset, value in mutations:
        data[offset % len(data)] = value
    _assert_fast_facts_are_checked(bytes(data))
