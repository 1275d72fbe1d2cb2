"""The HTTP contract of docs/attest.md, through FastAPI's test client, on SQLite and PostgreSQL,
with the verifier wired as `uvctl attest serve` wires it (real appraisal, real MakeCredential) and
simulated nodes sending real evidence (tests/attest/nodes.py)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from ultraviolet.attest.api import STORE_RETRY_AFTER, create_app
from ultraviolet.attest.enrolment import ek_fingerprint
from ultraviolet.attest.service import Verifier, VerifierConfig
from ultraviolet.attest.store import Store
from ultraviolet.formats.evidence import IpeEvent

from .nodes import Releases, SimulatedNode

TOKEN = "admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
RELEASES = Releases()
GENUINE = RELEASES.boot("uv", "1")


def simulated(node_id: str) -> SimulatedNode:
    return SimulatedNode(node_id, "ecc")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    verifier = Verifier(
        store,
        config=VerifierConfig(),
    )
    with TestClient(create_app(verifier, admin_token=TOKEN)) as test_client:
        yield test_client


def enrol(client: TestClient, node: SimulatedNode) -> None:
    approved = client.post(
        "/v1/admin/eks", json={"fingerprint": ek_fingerprint(node.ek)}, headers=ADMIN
    )
    assert approved.status_code == 201, approved.text
    response = client.post(
        "/v1/enrol",
        json={
            "node_id": node.node_id,
            "ek_public": b64(node.ek.to_2b()),
            "ek_certificate": None,
            "ak_public": b64(node.ak.to_2b()),
        },
    )
    assert response.status_code == 201, response.text
    challenge = response.json()
    secret = node.activate(
        base64.b64decode(challenge["credential_blob"]),
        base64.b64decode(challenge["encrypted_secret"]),
    )
    activated = client.post(
        f"/v1/enrol/{challenge['enrolment']}/activate", json={"secret": b64(secret)}
    )
    assert activated.status_code == 200, activated.text
    assert activated.json() == {"node_id": node.node_id, "state": "unknown"}


def submit(client: TestClient, node: SimulatedNode, nonce: str | None = None, **kw: Any) -> Any:
    if nonce is None:
        issued = client.post(f"/v1/nodes/{node.node_id}/nonce")
        assert issued.status_code == 200, issued.text
        nonce = issued.json()["nonce"]
        assert len(bytes.fromhex(nonce)) == 32 and issued.json()["expires_at"]
    evidence = node.evidence(bytes.fromhex(nonce), GENUINE, **kw).to_json()
    response = client.post(
        f"/v1/nodes/{node.node_id}/evidence", json={"nonce": nonce, "evidence": evidence}
    )
    assert response.status_code == 200, response.text
    return response.json()


def upload_release(client: TestClient) -> None:
    document = RELEASES.document("uv", "1")
    response = client.put("/v1/admin/releases/uv/1", content=document, headers=ADMIN)
    assert response.status_code == 204, response.text


def test_node_enrols_attests_and_shows_in_fleet_page_and_metrics(client: TestClient) -> None:
    upload_release(client)
    node = simulated("web-1")
    enrol(client, node)
    result = submit(client, node)
    assert (result["state"], result["release"]) == ("trusted", "uv 1")
    assert all(f["severity"] == "pass" for f in result["findings"])
    status = client.get("/v1/nodes/web-1").json()
    assert status["state"] == "trusted" and status["last_evidence_at"]
    assert client.get("/v1/fleet").json() == {
        "nodes": 1,
        "states": {"trusted": 1, "untrusted": 0, "stale": 0, "unknown": 0},
    }
    denial = IpeEvent("audit(1.0:1)", "ipe_op=EXECUTE <script>")
    assert submit(client, node, ipe_events=[denial])["state"] == "untrusted"
    page = client.get("/")
    assert page.status_code == 200 and 'id="node-web-1"' in page.text
    assert "ipe.denials" in page.text
    # The finding quotes the audit record, escaped.
    assert "ipe_op=EXECUTE &lt;script&gt;" in page.text and "<script>" not in page.text
    metrics = client.get("/metrics").text
    assert 'ultraviolet_attest_nodes{state="untrusted"} 1.0' in metrics
    assert 'ultraviolet_attest_evidence_total{state="trusted"} 1.0' in metrics
    assert 'ultraviolet_attest_failed_findings_total{finding="ipe.denials"} 1.0' in metrics
    nodes = client.get("/v1/admin/nodes", headers=ADMIN).json()["nodes"]
    assert [n["node_id"] for n in nodes] == ["web-1"]


def test_reused_nonce_is_answered_as_an_untrusted_appraisal(client: TestClient) -> None:
    upload_release(client)
    node = simulated("web-2")
    enrol(client, node)
    nonce = client.post("/v1/nodes/web-2/nonce").json()["nonce"]
    assert submit(client, node, nonce)["state"] == "trusted"
    replay = submit(client, node, nonce)
    assert replay["state"] == "untrusted"
    assert {"id": "nonce.fresh", "severity": "fail"}.items() <= next(
        f for f in replay["findings"] if f["id"] == "nonce.fresh"
    ).items()


def test_admin_calls_need_the_token(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN + "x"}):
        response = client.get("/v1/admin/nodes", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "admin.token"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [
        ("post", "/v1/enrol", b"{not json", 422, "request.invalid"),
        ("post", "/v1/enrol", {"node_id": "a"}, 422, "request.invalid"),
        ("post", "/v1/enrol", {"node_id": "../x", "ek_public": "", "ak_public": ""}, 422, None),
        (
            "post",
            "/v1/enrol",
            {"node_id": "a", "ek_public": "!!", "ak_public": "AA=="},
            400,
            "request.base64",
        ),
        (
            "post",
            "/v1/enrol",
            {"node_id": "a", "ek_public": "AAAA", "ak_public": "AAAA"},
            400,
            None,
        ),
        ("post", "/v1/enrol/00/activate", {"secret": "AA=="}, 422, "request.invalid"),
        ("post", "/v1/enrol/" + "0" * 32 + "/activate", {"secret": "AA=="}, 404, None),
        ("post", "/v1/nodes/nobody/nonce", None, 404, "node.unknown"),
        ("post", "/v1/nodes/nobody/evidence", {"nonce": "zz", "evidence": {}}, 422, None),
        ("post", "/v1/nodes/nobody/evidence", {"nonce": "00", "evidence": {}}, 404, None),
        ("post", "/v1/nodes/nobody/evidence", {"nonce": "00", "evidence": []}, 422, None),
        ("get", "/v1/nodes/nobody", None, 404, "node.unknown"),
        ("get", "/v1/nowhere", None, 404, "http.404"),
        ("put", "/v1/admin/releases/uv/1", b"[]", 400, "request.format"),
        ("put", "/v1/admin/releases/uv/2", RELEASES.document("uv", "1"), 409, None),
        ("post", "/v1/admin/eks", {"fingerprint": "AB"}, 422, "request.invalid"),
    ],
)
def test_bad_requests_get_json_errors(
    client: TestClient, method: str, path: str, body: Any, status: int, error: str | None
) -> None:
    if isinstance(body, bytes):
        response = client.request(method, path, content=body, headers=ADMIN)
    else:
        response = client.request(method, path, json=body, headers=ADMIN)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error", "message"}
    if error:
        assert response.json()["error"] == error


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(["/v1/enrol", "/v1/enrol/" + "a" * 32 + "/activate", "/v1/admin/eks"]),
    body=st.one_of(json_values, st.dictionaries(st.sampled_from(
        ["node_id", "ek_public", "ak_public", "ek_certificate", "secret", "fingerprint"]),
        st.text(max_size=40) | st.none(), max_size=5)),
)  # fmt: skip
def test_no_body_makes_a_server_error(client: TestClient, path: str, body: Any) -> None:
    response = client.post(path, json=body, headers=ADMIN)
    assert response.status_code < 500, response.text
    assert set(response.json()) >= {"error", "message"} or response.status_code < 300


def test_openapi_document_describes_the_contract(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/v1/enrol",
        "/v1/enrol/{enrolment}/activate",
        "/v1/nodes/{node_id}/nonce",
        "/v1/nodes/{node_id}/evidence",
        "/v1/nodes/{node_id}",
        "/v1/fleet",
        "/v1/admin/releases/{name}/{version}",
        "/v1/admin/nodes",
        "/v1/admin/eks",
    } <= set(paths)


evidence_bodies = st.fixed_dictionaries(
    {
        "format": st.sampled_from([1, 2, "1", None]),
        "quote": st.sampled_from(["", "AAAA", "!!", 5]),
        "signature": st.sampled_from(["", "AAAA"]),
        "pcrs": st.dictionaries(
            st.sampled_from(["sha256", "sha1", "md5"]),
            st.dictionaries(st.text(max_size=3), st.text(max_size=8) | st.integers()),
            max_size=2,
        ),
        "firmware_log": st.sampled_from(["", "AAAA"]),
        "userspace_log": st.sampled_from(["", "AAAA"]),
        "ipe_events": st.lists(json_values, max_size=2),
    }
) | st.dictionaries(st.text(max_size=8), json_values, max_size=4)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=evidence_bodies)
def test_no_evidence_makes_a_server_error(client: TestClient, body: dict[str, Any]) -> None:
    if client.get("/v1/nodes/fuzzed").status_code == 404:
        upload_release(client)  # so that the body is appraised, not refused for lack of one
        enrol(client, simulated("fuzzed"))
    nonce = client.post("/v1/nodes/fuzzed/nonce").json()["nonce"]
    response = client.post("/v1/nodes/fuzzed/evidence", json={"nonce": nonce, "evidence": body})
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "untrusted"
    failed = {f["id"] for f in response.json()["findings"] if f["severity"] == "fail"}
    assert failed & {"evidence.format", "ak.known", "quote.signature"}, failed


def test_oversized_bodies_are_refused_before_reading(client: TestClient) -> None:
    huge = b"x" * (16 * 1024 * 1024 + 1)
    response = client.post("/v1/nodes/any/evidence", content=huge)
    assert response.status_code == 413
    assert response.json()["error"] == "request.too-large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(17):
            yield b"y" * (1024 * 1024)

    streamed = client.post("/v1/nodes/any/evidence", content=chunks())
    assert streamed.status_code == 413


def test_a_retired_release_no_longer_counts(client: TestClient) -> None:
    upload_release(client)
    node = simulated("web-3")
    enrol(client, node)
    assert submit(client, node)["release"] == "uv 1"
    assert client.delete("/v1/admin/releases/uv/1", headers=ADMIN).status_code == 204
    assert client.delete("/v1/admin/releases/uv/1", headers=ADMIN).json()["error"] == (
        "release.unknown"
    )
    result = submit(client, node)
    assert (result["state"], result["release"]) == ("untrusted", None)


def test_a_database_failure_is_a_503_that_says_when_to_come_back(
    client: TestClient, store: Store
) -> None:
    node = simulated("web-4")
    enrol(client, node)
    with store.engine.begin() as connection:  # the nonce insert now fails in the database
        connection.execute(text("DROP TABLE nonces"))
    response = client.post(f"/v1/nodes/{node.node_id}/nonce")
    assert response.status_code == 503
    assert response.json()["error"] == "store.unavailable"
    assert response.headers["Retry-After"] == str(STORE_RETRY_AFTER)
