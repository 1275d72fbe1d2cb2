"""The service as `uvctl attest serve` wires it: the real appraisal engine, the real release
loader and TPM2_MakeCredential in software, over HTTP. The node is attest/simulate.py's software
TPM (an RSA AK quoting OVMF-like boot logs) with an RSA EK whose private key answers the
credential challenge (formats/tpmcredential.activate_credential). Each attack ends untrusted
with its finding id, and an alert with that id reaches a real webhook receiver."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ultraviolet.attest.alerts import Dispatcher, Sink
from ultraviolet.attest.api import create_app
from ultraviolet.attest.enrolment import ek_fingerprint
from ultraviolet.attest.service import Verifier, VerifierConfig
from ultraviolet.attest.simulate import (
    Boot,
    SecureBootKeys,
    SimulatedRelease,
    SoftwareTpm,
    boot_measurements,
    simulated_evidence,
    synthetic_release,
)
from ultraviolet.attest.store import Store
from ultraviolet.formats.evidence import IpeEvent
from ultraviolet.formats.reference import render_reference
from ultraviolet.formats.tpmcredential import activate_credential

from .receivers import WebhookReceiver, webhook_receiver
from .services import SimulatedNode

TOKEN = "engine-test-token-0123"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
DENIAL = (
    'ipe_op=EXECUTE ipe_hook=BPRM_CHECK enforcing=1 pid=4242 comm="sh" path="/tmp/x" '
    'dev="tmpfs" ino=17 rule="DEFAULT action=DENY"'
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def releases() -> tuple[SimulatedRelease, SimulatedRelease]:
    keys = SecureBootKeys.generate()
    return synthetic_release("host", "1.0", keys), synthetic_release("host", "1.1", keys)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with webhook_receiver() as running:
        yield running


@pytest.fixture
def client(store: Store, receiver: WebhookReceiver) -> Iterator[TestClient]:
    verifier = Verifier(
        store,
        config=VerifierConfig(sinks=(Sink("webhook", receiver.url),)),
    )
    with TestClient(create_app(verifier, admin_token=TOKEN)) as test_client:
        yield test_client


def enrol(client: TestClient, node: SimulatedNode) -> None:
    fingerprint = ek_fingerprint(node.ek)
    client.post("/v1/admin/eks", json={"fingerprint": fingerprint}, headers=ADMIN)
    body = {
        "node_id": node.node_id,
        "ek_public": b64(node.ek.to_2b()),
        "ek_certificate": None,
        "ak_public": b64(node.tpm.public.to_2b()),
    }
    challenge = client.post("/v1/enrol", json=body)
    assert challenge.status_code == 201, challenge.text
    answer = challenge.json()
    secret = activate_credential(
        node.ek_key,
        node.ek,
        node.tpm.public.name(),
        base64.b64decode(answer["credential_blob"]),
        base64.b64decode(answer["encrypted_secret"]),
    )
    activated = client.post(
        f"/v1/enrol/{answer['enrolment']}/activate", json={"secret": b64(secret)}
    )
    assert activated.status_code == 200, activated.text


def submit(
    client: TestClient,
    node: SimulatedNode,
    boot: Boot,
    *,
    quoting: SoftwareTpm | None = None,
    nonce: str | None = None,
    ipe: tuple[IpeEvent, ...] = (),
) -> dict[str, Any]:
    nonce = nonce or client.post(f"/v1/nodes/{node.node_id}/nonce").json()["nonce"]
    evidence = simulated_evidence(quoting or node.tpm, boot, bytes.fromhex(nonce), ipe_events=ipe)
    response = client.post(
        f"/v1/nodes/{node.node_id}/evidence",
        json={"nonce": nonce, "evidence": evidence.to_json()},
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def failed(result: dict[str, Any]) -> set[str]:
    return {f["id"] for f in result["findings"] if f["severity"] == "fail"}


def test_genuine_node_is_trusted_and_each_attack_fails_by_id_with_an_alert(
    client: TestClient,
    store: Store,
    receiver: WebhookReceiver,
    releases: tuple[SimulatedRelease, SimulatedRelease],
) -> None:
    accepted, other = releases
    document = render_reference(accepted.reference).encode()
    assert (
        client.put("/v1/admin/releases/host/1.0", content=document, headers=ADMIN).status_code
        == 204
    )
    node = SimulatedNode("engine-1")
    enrol(client, node)
    good = boot_measurements(accepted)
    secure_boot_off = boot_measurements(accepted, secure_boot=False)
    nonce = client.post("/v1/nodes/engine-1/nonce").json()["nonce"]
    genuine = submit(client, node, good, nonce=nonce)
    assert (genuine["state"], genuine["release"], failed(genuine)) == ("trusted", "host 1.0", set())

    attacks: dict[str, Callable[[], dict[str, Any]]] = {
        "nonce.fresh": lambda: submit(client, node, good, nonce=nonce),
        "ak.known": lambda: submit(client, node, good, quoting=SoftwareTpm()),
        "pcr7.secure-boot": lambda: submit(client, node, secure_boot_off),
        "pcr11.reference": lambda: submit(client, node, boot_measurements(other)),
        "ipe.denials": lambda: submit(client, node, good, ipe=(IpeEvent("audit(1.0:7)", DENIAL),)),
    }  # fmt: skip
    dispatcher = Dispatcher(store)
    try:
        for finding_id, attack in attacks.items():
            result = attack()
            assert result["state"] == "untrusted" and finding_id in failed(result), result
            assert submit(client, node, good)["state"] == "trusted"  # recovers, alert resolves
        delivered, refused = dispatcher.run_once()
        assert delivered == len(receiver.received)
    finally:
        dispatcher.close()
    assert refused == 0
    fired = [a["check"] for a in receiver.received if a["status"] == "firing"]
    assert set(attacks) <= set(fired)
    assert client.get("/v1/nodes/engine-1").json()["state"] == "trusted"


def test_without_accepted_releases_evidence_fails_the_reference_check(
    client: TestClient, releases: tuple[SimulatedRelease, SimulatedRelease]
) -> None:
    node = SimulatedNode("engine-2")
    enrol(client, node)
    result = submit(client, node, boot_measurements(releases[0]))
    assert (result["state"], failed(result)) == ("untrusted", {"pcr11.reference"})
    assert "no accepted release" in result["findings"][0]["message"]
