"""The verifier's operations on SQLite and on a real PostgreSQL server, with the real appraisal
(attest/appraise.py, references.py) of real evidence: a simulated node's quotes signed by its
AK over PCRs extended from the boot logs of a synthetic release (tests/attest/nodes.py)."""

from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select

from ultraviolet.attest.alerts import CHECKIN_MISSED, Sink
from ultraviolet.attest.enrolment import ek_fingerprint
from ultraviolet.attest.errors import Conflict, Forbidden, Gone, NotFound
from ultraviolet.attest.model import FindingId, NodeState, Severity
from ultraviolet.attest.service import Outcome, Verifier, VerifierConfig
from ultraviolet.attest.simulate import Boot
from ultraviolet.attest.store import AlertState, EvidenceRecord, Node, OutboxAlert, Store
from ultraviolet.formats.evidence import IpeEvent

from .nodes import Releases, SimulatedNode, software_tpm

RELEASES = Releases()
GENUINE = RELEASES.boot("uv", "1")  # what an accepted node boots


def simulated(node_id: str) -> SimulatedNode:
    return SimulatedNode(node_id, "ecc")  # a P-256 AK: made in a millisecond


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
        self.lock = threading.Lock()

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def make_verifier(store: Store, clock: Clock, **config: object) -> Verifier:
    settings = VerifierConfig(sinks=(Sink("webhook", "http://127.0.0.1:9/hook"),), **config)  # type: ignore[arg-type]
    return Verifier(
        store,
        config=settings,
        clock=clock,
    )


def enrol(verifier: Verifier, node: SimulatedNode) -> None:
    verifier.approve_ek(ek_fingerprint(node.ek), "test")
    challenge = verifier.enrol(node.node_id, node.ek.to_2b(), None, node.ak.to_2b())
    secret = node.activate(challenge.credential_blob, challenge.encrypted_secret)
    assert verifier.activate(challenge.enrolment, secret) == (node.node_id, NodeState.UNKNOWN)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(store: Store, clock: Clock) -> Verifier:
    made = make_verifier(store, clock)
    made.put_release("uv", "1", RELEASES.document("uv", "1"))
    return made


def attest(verifier: Verifier, node: SimulatedNode, boot: Boot = GENUINE, **kwargs: Any) -> Outcome:
    nonce, _ = verifier.issue_nonce(node.node_id)
    evidence = node.evidence(nonce, boot, **kwargs).to_json()
    return verifier.submit_evidence(node.node_id, nonce, evidence)


def outbox(store: Store) -> list[OutboxAlert]:
    with store.session() as session:
        return list(session.scalars(select(OutboxAlert).order_by(OutboxAlert.id)))


def test_enrolled_node_attests_trusted_and_the_record_is_kept(
    verifier: Verifier, store: Store
) -> None:
    node = simulated("node-a")
    enrol(verifier, node)
    outcome = attest(verifier, node)
    assert outcome.state is NodeState.TRUSTED
    assert outcome.release == "uv 1"
    assert {f.id for f in outcome.findings} >= {
        FindingId.AK_KNOWN, FindingId.QUOTE_SIGNATURE, FindingId.NONCE_FRESH,
        FindingId.EVENTLOG_REPLAY, FindingId.PCR7_SECURE_BOOT, FindingId.PCR11_REFERENCE,
    }  # fmt: skip
    assert all(f.severity is Severity.PASS for f in outcome.findings)
    with store.session() as session:
        record = session.get(EvidenceRecord, outcome.evidence_id)
        stored = session.get(Node, "node-a")
    assert record is not None and b'"quote"' in record.raw
    assert stored is not None and stored.state == "trusted" and stored.release == "uv 1"
    assert outbox(store) == []  # nothing failed, nothing to alert


def test_unapproved_ek_and_wrong_secret_are_refused(verifier: Verifier) -> None:
    node = simulated("node-b")
    with pytest.raises(Forbidden) as refused:
        verifier.enrol(node.node_id, node.ek.to_2b(), None, node.ak.to_2b())
    assert refused.value.error_id == "enrol.ek-not-approved"
    verifier.approve_ek(ek_fingerprint(node.ek))
    challenge = verifier.enrol(node.node_id, node.ek.to_2b(), None, node.ak.to_2b())
    with pytest.raises(Forbidden):
        verifier.activate(challenge.enrolment, b"\0" * 32)
    right = node.activate(challenge.credential_blob, challenge.encrypted_secret)
    with pytest.raises(Gone):  # a wrong answer burnt the challenge
        verifier.activate(challenge.enrolment, right)
    with pytest.raises(NotFound):
        verifier.issue_nonce(node.node_id)


def test_node_id_of_another_ek_is_a_conflict(verifier: Verifier) -> None:
    enrol(verifier, simulated("node-c"))
    impostor = simulated("node-c")
    verifier.approve_ek(ek_fingerprint(impostor.ek))
    with pytest.raises(Conflict):
        verifier.enrol(impostor.node_id, impostor.ek.to_2b(), None, impostor.ak.to_2b())


def test_reused_unknown_and_expired_nonces_are_failed_findings_with_alerts(
    verifier: Verifier, store: Store, clock: Clock
) -> None:
    node = simulated("node-d")
    enrol(verifier, node)
    nonce, _ = verifier.issue_nonce(node.node_id)
    evidence = node.evidence(nonce, GENUINE).to_json()
    assert verifier.submit_evidence(node.node_id, nonce, evidence).state is NodeState.TRUSTED
    replay = verifier.submit_evidence(node.node_id, nonce, evidence)
    assert replay.state is NodeState.UNTRUSTED
    failure = next(f for f in replay.findings if f.id is FindingId.NONCE_FRESH)
    assert failure.severity is Severity.FAIL and "already used" in failure.message
    unknown = b"\x42" * 32
    outcome = verifier.submit_evidence(
        node.node_id, unknown, node.evidence(unknown, GENUINE).to_json()
    )
    assert "not issued" in next(f.message for f in outcome.findings if f.id.value == "nonce.fresh")
    late, _ = verifier.issue_nonce(node.node_id)
    clock.advance(121)
    outcome = verifier.submit_evidence(node.node_id, late, node.evidence(late, GENUINE).to_json())
    assert "expired" in next(f.message for f in outcome.findings if f.id.value == "nonce.fresh")
    alerts = outbox(store)
    assert len(alerts) == 1, "one alert for nonce.fresh, not resent while it keeps failing"
    assert '"check": "nonce.fresh"' in alerts[0].payload
    assert '"status": "firing"' in alerts[0].payload
    assert attest(verifier, node).state is NodeState.TRUSTED
    resolved = outbox(store)[1:]
    assert len(resolved) == 1 and '"status": "resolved"' in resolved[0].payload


def test_a_nonce_is_consumed_once_under_concurrent_submissions(
    verifier: Verifier, store: Store
) -> None:
    node = simulated("node-e")
    enrol(verifier, node)
    nonce, _ = verifier.issue_nonce(node.node_id)
    evidence = node.evidence(nonce, GENUINE).to_json()
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(
            pool.map(lambda _: verifier.submit_evidence(node.node_id, nonce, evidence), range(8))
        )
    fresh = [
        o for o in outcomes if o.findings and all(f.severity is Severity.PASS for f in o.findings)
    ]
    assert len(fresh) == 1
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(EvidenceRecord)) == 8


def test_quote_by_another_ak_and_ipe_denials_fail(verifier: Verifier, store: Store) -> None:
    node = simulated("node-f")
    enrol(verifier, node)
    outcome = attest(verifier, node, signer=software_tpm("ecc"))
    assert outcome.state is NodeState.UNTRUSTED
    assert {f.id for f in outcome.findings if f.severity is Severity.FAIL} == {
        FindingId.AK_KNOWN,
        FindingId.QUOTE_SIGNATURE,
    }
    denial = IpeEvent("audit(1700000000.123:42)", 'ipe_op=EXECUTE rule="DEFAULT action=DENY"')
    outcome = attest(verifier, node, ipe_events=[denial])
    assert [f.id for f in outcome.findings if f.severity is Severity.FAIL] == [
        FindingId.IPE_DENIALS
    ]
    checks = {a.payload.split('"check": "')[1].split('"')[0] for a in outbox(store)}
    assert checks == {"ak.known", "quote.signature", "ipe.denials"}


def test_a_re_enrolled_node_is_appraised_with_its_new_ak_not_the_cached_old_one(
    verifier: Verifier,
) -> None:
    node = simulated("node-r")
    enrol(verifier, node)
    assert attest(verifier, node).state is NodeState.TRUSTED  # the old AK is parsed and cached
    old_tpm = node.tpm
    node.tpm = software_tpm("ecc")  # the same EK, a new AK
    enrol(verifier, node)
    assert attest(verifier, node).state is NodeState.TRUSTED
    replay = attest(verifier, node, signer=old_tpm)
    assert {f.id for f in replay.findings if f.severity is Severity.FAIL} == {
        FindingId.AK_KNOWN,
        FindingId.QUOTE_SIGNATURE,
    }


def test_malformed_evidence_is_a_format_finding(verifier: Verifier) -> None:
    node = simulated("node-g")
    enrol(verifier, node)
    nonce, _ = verifier.issue_nonce(node.node_id)
    outcome = verifier.submit_evidence(node.node_id, nonce, {"format": 1, "quote": 7})
    assert outcome.state is NodeState.UNTRUSTED
    assert outcome.findings[0].id is FindingId.EVIDENCE_FORMAT


def test_silent_nodes_become_stale_once_and_recover(
    verifier: Verifier, store: Store, clock: Clock
) -> None:
    quiet, failing = simulated("quiet"), simulated("failing")
    enrol(verifier, quiet)
    enrol(verifier, failing)
    attest(verifier, quiet)
    attest(verifier, failing, signer=software_tpm("ecc"))
    clock.advance(599)
    assert verifier.mark_stale() == []
    clock.advance(2)
    assert verifier.mark_stale() == ["quiet"]  # the untrusted node stays untrusted
    assert verifier.mark_stale() == []
    with store.session() as session:
        state = session.get(
            AlertState,
            session.scalar(
                select(AlertState.fingerprint).where(
                    AlertState.node_id == "quiet", AlertState.check == CHECKIN_MISSED
                )
            ),
        )
        assert state is not None and state.firing
    assert attest(verifier, quiet).state is NodeState.TRUSTED
    assert '"status": "resolved"' in outbox(store)[-1].payload


def test_release_documents_are_checked(verifier: Verifier) -> None:
    with pytest.raises(Conflict):
        verifier.put_release("uv", "2", RELEASES.document("uv", "3"))
    node = simulated("node-h")
    enrol(verifier, node)
    newer = RELEASES.boot("uv", "2")
    refused = attest(verifier, node, newer)
    assert refused.state is NodeState.UNTRUSTED and refused.release is None
    assert FindingId.PCR11_REFERENCE in {
        f.id for f in refused.findings if f.severity.value == "fail"
    }
    verifier.put_release("uv", "2", RELEASES.document("uv", "2"))
    outcome = attest(verifier, node, newer)
    assert (outcome.state, outcome.release) == (NodeState.TRUSTED, "uv 2")


def test_expired_nonces_are_pruned_and_a_replay_still_fails(
    verifier: Verifier, clock: Clock
) -> None:
    node = simulated("node-i")
    enrol(verifier, node)
    nonce, _ = verifier.issue_nonce(node.node_id)
    evidence = node.evidence(nonce, GENUINE).to_json()
    assert verifier.submit_evidence(node.node_id, nonce, evidence).state is NodeState.TRUSTED
    verifier.issue_nonce(node.node_id)
    assert verifier.prune_nonces() == 0
    clock.advance(2 * 3600)
    assert verifier.prune_nonces() == 2
    replay = verifier.submit_evidence(node.node_id, nonce, evidence)
    assert replay.state is NodeState.UNTRUSTED
