"""Alert delivery from the outbox: a real webhook receiver and a real Prometheus Alertmanager.
The alerts come from the real appraisal of a simulated node (tests/attest/nodes.py) that once
boots with Secure Boot off: one failed check, pcr7.secure-boot, then trusted again."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
from sqlalchemy import select

from ultraviolet.attest.alerts import Dispatcher, Sink, backoff
from ultraviolet.attest.enrolment import ek_fingerprint
from ultraviolet.attest.model import NodeState
from ultraviolet.attest.service import Verifier, VerifierConfig
from ultraviolet.attest.store import OutboxAlert, Store, utcnow

from .nodes import Releases, SimulatedNode
from .receivers import ALERTMANAGER, alertmanager, free_port, webhook_receiver

LATER = dt.timedelta(hours=2)  # past any backoff
RELEASES = Releases()
GENUINE = RELEASES.boot("uv", "1")
INSECURE = RELEASES.boot("uv", "1", secure_boot=False)  # fails pcr7.secure-boot alone


def verifier_with(store: Store, *sinks: Sink) -> Verifier:
    verifier = Verifier(
        store,
        config=VerifierConfig(sinks=sinks, base_url="http://verifier.test:8400"),
    )
    verifier.put_release("uv", "1", RELEASES.document("uv", "1"))
    return verifier


def enrolled(verifier: Verifier, node_id: str) -> SimulatedNode:
    node = SimulatedNode(node_id, "ecc")
    verifier.approve_ek(ek_fingerprint(node.ek))
    challenge = verifier.enrol(node.node_id, node.ek.to_2b(), None, node.ak.to_2b())
    verifier.activate(
        challenge.enrolment, node.activate(challenge.credential_blob, challenge.encrypted_secret)
    )
    return node


def attest(verifier: Verifier, node: SimulatedNode, *, secure_boot: bool = True) -> NodeState:
    nonce, _ = verifier.issue_nonce(node.node_id)
    evidence = node.evidence(nonce, GENUINE if secure_boot else INSECURE).to_json()
    return verifier.submit_evidence(node.node_id, nonce, evidence).state


def test_webhook_gets_each_change_once_after_retries(store: Store) -> None:
    with webhook_receiver(refuse_first=2) as receiver:
        verifier = verifier_with(store, Sink("webhook", receiver.url))
        node = enrolled(verifier, "hook-1")
        assert attest(verifier, node, secure_boot=False) is NodeState.UNTRUSTED
        assert attest(verifier, node, secure_boot=False) is NodeState.UNTRUSTED
        dispatcher = Dispatcher(store)
        try:
            assert dispatcher.run_once() == (0, 1)  # refused: 503
            assert dispatcher.run_once() == (0, 0)  # backing off
            assert dispatcher.run_once(utcnow() + LATER) == (0, 1)
            assert dispatcher.run_once(utcnow() + LATER) == (1, 0)
            assert dispatcher.run_once(utcnow() + LATER) == (0, 0)  # delivered: never again
            assert attest(verifier, node) is NodeState.TRUSTED
            assert dispatcher.run_once() == (1, 0)
        finally:
            dispatcher.close()
    firing, resolved = receiver.received
    assert receiver.requests == 4
    assert (firing["status"], firing["check"], firing["node_id"]) == (
        "firing",
        "pcr7.secure-boot",
        "hook-1",
    )
    assert firing["ends_at"] is None and firing["url"].startswith("http://verifier.test:8400/")
    assert (resolved["status"], resolved["fingerprint"]) == ("resolved", firing["fingerprint"])
    with store.session() as session:
        rows = list(session.scalars(select(OutboxAlert).order_by(OutboxAlert.id)))
    assert [row.attempts for row in rows] == [3, 1]
    assert all(row.delivered_at is not None for row in rows)


def test_a_resolution_waits_for_its_retried_firing(store: Store) -> None:
    with webhook_receiver(refuse_first=1) as receiver:
        verifier = verifier_with(store, Sink("webhook", receiver.url))
        node = enrolled(verifier, "hook-3")
        attest(verifier, node, secure_boot=False)
        dispatcher = Dispatcher(store)
        try:
            assert dispatcher.run_once() == (0, 1)  # "firing" refused, backing off
            assert attest(verifier, node) is NodeState.TRUSTED  # queues "resolved"
            assert dispatcher.run_once() == (0, 0)  # "resolved" must not overtake it
            assert dispatcher.run_once(utcnow() + LATER) == (1, 0)
            assert dispatcher.run_once(utcnow() + LATER) == (1, 0)
        finally:
            dispatcher.close()
    assert [a["status"] for a in receiver.received] == ["firing", "resolved"]


def test_unreachable_sink_keeps_the_alert_and_backs_off(store: Store) -> None:
    verifier = verifier_with(store, Sink("webhook", f"http://127.0.0.1:{free_port()}/gone"))
    node = enrolled(verifier, "hook-2")
    attest(verifier, node, secure_boot=False)
    dispatcher = Dispatcher(store, timeout=2)
    try:
        for _ in range(3):
            assert dispatcher.run_once(utcnow() + LATER) == (0, 1)
    finally:
        dispatcher.close()
    with store.session() as session:
        row = session.scalars(select(OutboxAlert)).one()
    assert row.delivered_at is None and row.attempts == 3
    assert row.last_error is not None and "Connect" in row.last_error
    assert backoff(1) < backoff(3) < backoff(30) == dt.timedelta(seconds=300)


@pytest.mark.skipif(ALERTMANAGER is None, reason="apt-get install prometheus-alertmanager")
@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_alertmanager_accepts_fires_and_resolves_our_alerts(store: Store) -> None:
    with alertmanager() as url:
        verifier = verifier_with(store, Sink("alertmanager", url))
        node = enrolled(verifier, "am-1")
        attest(verifier, node, secure_boot=False)
        dispatcher = Dispatcher(store)
        try:
            assert dispatcher.run_once() == (1, 0), "Alertmanager refused the alert"
            active = httpx.get(f"{url}/api/v2/alerts", params={"filter": 'node="am-1"'}).json()
            assert len(active) == 1
            alert = active[0]
            assert alert["labels"] == {
                "alertname": "UltravioletAttestation",
                "node": "am-1",
                "check": "pcr7.secure-boot",
                "severity": "fail",
            }
            assert alert["status"]["state"] == "active"
            assert alert["generatorURL"] == "http://verifier.test:8400/#node-am-1"
            assert attest(verifier, node) is NodeState.TRUSTED
            assert dispatcher.run_once() == (1, 0)
            after = httpx.get(f"{url}/api/v2/alerts", params={"filter": 'node="am-1"'}).json()
            assert after == [], "the resolved alert is still active"
        finally:
            dispatcher.close()
