"""Crash robustness: `uvctl attest serve` (and PostgreSQL) are killed while nodes stream
evidence; after the restart every acknowledged submission has its record, node states follow
the last record, and every alert change that the records imply was delivered to the webhook."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from ultraviolet.attest.alerts import fingerprint
from ultraviolet.attest.simulate import (
    Boot,
    SecureBootKeys,
    SoftwareTpm,
    boot_measurements,
    simulated_evidence,
    synthetic_release,
)
from ultraviolet.attest.store import EvidenceRecord, Node, OutboxAlert, Store
from ultraviolet.formats.reference import render_reference

from .pgserver import PostgresServer, postgres_bindir
from .receivers import WebhookReceiver, webhook_receiver
from .services import ADMIN, Service, SimulatedNode, enrol_over_http

NODES = 3
ROUNDS = 9
CHECK = "ak.known"  # every third submission is quoted by a foreign AK


@dataclass
class Acknowledged:
    lock: threading.Lock = field(default_factory=threading.Lock)
    states: dict[str, str] = field(default_factory=dict)  # nonce hex -> state answered
    retries: int = 0


def _stream(service: Service, node: SimulatedNode, boot: Boot, done: Acknowledged) -> None:
    """One node: ROUNDS acknowledged submissions, retrying through outages (bounded)."""
    intruder = SoftwareTpm()
    deadline = time.monotonic() + 240
    round_number = 0
    with httpx.Client(base_url=service.url, timeout=10) as client:
        while round_number < ROUNDS and time.monotonic() < deadline:
            try:
                issued = client.post(f"/v1/nodes/{node.node_id}/nonce")
                if issued.status_code != 200:
                    raise httpx.TransportError(f"nonce: {issued.status_code}")
                nonce = issued.json()["nonce"]
                tpm = intruder if round_number % 3 == 2 else node.tpm
                evidence = simulated_evidence(tpm, boot, bytes.fromhex(nonce))
                answer = client.post(
                    f"/v1/nodes/{node.node_id}/evidence",
                    json={"nonce": nonce, "evidence": evidence.to_json()},
                )
                if answer.status_code != 200:
                    raise httpx.TransportError(f"evidence: {answer.status_code}")
            except httpx.HTTPError:
                with done.lock:
                    done.retries += 1
                time.sleep(0.2)
                continue
            with done.lock:
                done.states[nonce] = answer.json()["state"]
            round_number += 1


@pytest.fixture(params=["sqlite", "postgresql"])
def setup(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Service, PostgresServer | None, WebhookReceiver]]:
    server = None
    if request.param == "sqlite":
        database = str(tmp_path / "attest.db")
    else:
        if postgres_bindir() is None:
            pytest.skip("PostgreSQL is not installed")
        server = PostgresServer.create()
        server.start()
        database = server.create_database("restart")
    with webhook_receiver() as receiver:
        service = Service(database, tmp_path, receiver.url)
        try:
            yield service, server, receiver
        finally:
            service.stop()
            if server is not None:
                server.destroy()


def _wait_delivered(store: Store, timeout: float = 90) -> list[OutboxAlert]:  # > a lease
    deadline = time.monotonic() + timeout
    while True:
        with store.session() as session:
            rows = list(session.scalars(select(OutboxAlert).order_by(OutboxAlert.id)))
        if all(row.delivered_at is not None for row in rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.3)


def test_killed_service_and_database_lose_no_record_and_no_alert(
    setup: tuple[Service, PostgresServer | None, WebhookReceiver],
) -> None:
    service, server, receiver = setup
    release = synthetic_release("host", "1.0", SecureBootKeys.generate())
    boot = boot_measurements(release)
    service.start()
    nodes = [SimulatedNode(f"crash-{n}") for n in range(NODES)]
    with httpx.Client(base_url=service.url, timeout=30) as admin:
        document = render_reference(release.reference).encode()
        uploaded = admin.put("/v1/admin/releases/host/1.0", content=document, headers=ADMIN)
        assert uploaded.status_code == 204
        for node in nodes:
            enrol_over_http(admin, node)
    done = Acknowledged()
    threads = [threading.Thread(target=_stream, args=(service, n, boot, done)) for n in nodes]
    for thread in threads:
        thread.start()
    for crash_after in (NODES * ROUNDS // 4, NODES * ROUNDS // 2):
        while len(done.states) < crash_after and any(t.is_alive() for t in threads):
            time.sleep(0.05)
        service.kill()
        if server is not None:
            server.stop("immediate")  # a crash: recovery from the WAL
            server.start()
        service.start()
    for thread in threads:
        thread.join(timeout=300)
    assert len(done.states) == NODES * ROUNDS, f"only {len(done.states)} acknowledged"

    store = Store.open(service.database, migrate=False)
    try:
        rows = _wait_delivered(store)
        with store.session() as session:
            records = list(session.scalars(select(EvidenceRecord).order_by(EvidenceRecord.id)))
            states = {node.id: node.state for node in session.scalars(select(Node))}
    finally:
        store.close()
    by_nonce = {record.nonce.hex(): record for record in records}
    for nonce, state in done.states.items():
        assert nonce in by_nonce, "an acknowledged submission has no record"
        assert by_nonce[nonce].state == state
    for node in nodes:
        mine = [r for r in records if r.node_id == node.node_id]
        assert states[node.node_id] == mine[-1].state  # the node follows its newest record
        # Alert changes implied by the records: each flip of ak.known queued exactly once...
        firing, flips = False, 0
        for record in mine:
            now_firing = any(
                f["id"] == CHECK and f["severity"] == "fail" for f in json.loads(record.findings)
            )
            flips += now_firing != firing
            firing = now_firing
        queued = [row for row in rows if row.fingerprint == fingerprint(node.node_id, CHECK)]
        assert len(queued) == flips
    # ...and delivered (at least once) to the webhook, exactly as queued.
    assert all(row.delivered_at is not None for row in rows), "undelivered alerts"
    received = {json.dumps(alert, sort_keys=True) for alert in receiver.received}
    assert {row.payload for row in rows} <= received
    print(f"acknowledged {len(done.states)}, records {len(records)}, alerts {len(rows)}")
