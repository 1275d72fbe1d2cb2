"""Two stateless `uvctl attest serve` workers on one PostgreSQL: a node may use either, a nonce
is consumed once across workers, a silent node is marked stale (and alerted) once, and the fleet
page shows it in headless Chromium."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ultraviolet.attest.simulate import (
    SecureBootKeys,
    boot_measurements,
    simulated_evidence,
    synthetic_release,
)
from ultraviolet.formats.reference import render_reference
from ultraviolet.tools import run_host

from .pgserver import PostgresServer
from .receivers import WebhookReceiver, webhook_receiver
from .services import ADMIN, Service, SimulatedNode, enrol_over_http

CHROMIUM = shutil.which("chromium")
CHECK_IN = 3.0


@pytest.fixture
def workers(
    postgres: PostgresServer, tmp_path: Path
) -> Iterator[tuple[Service, Service, WebhookReceiver]]:
    database = postgres.create_database(f"workers{int(time.time() * 1000) % 10**9}")
    extra = ("--check-in-interval", str(CHECK_IN))
    with webhook_receiver() as receiver:
        first = Service(database, tmp_path, receiver.url, extra=extra)
        second = Service(database, tmp_path, receiver.url, extra=extra)
        try:
            first.start()
            second.start()
            yield first, second, receiver
        finally:
            first.stop()
            second.stop()


def _submit(url: str, node_id: str, nonce: str, evidence: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(
        f"{url}/v1/nodes/{node_id}/evidence",
        json={"nonce": nonce, "evidence": evidence},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_workers_share_nodes_nonces_and_stale_marking(
    workers: tuple[Service, Service, WebhookReceiver], tmp_path: Path
) -> None:
    first, second, receiver = workers
    release = synthetic_release("host", "1.0", SecureBootKeys.generate())
    boot = boot_measurements(release)
    node = SimulatedNode("shared-1")
    with httpx.Client(base_url=first.url, timeout=30) as admin:
        document = render_reference(release.reference).encode()
        uploaded = admin.put("/v1/admin/releases/host/1.0", content=document, headers=ADMIN)
        assert uploaded.status_code == 204
        enrol_over_http(admin, node)
    # Nonce from one worker, evidence to the other.
    nonce = httpx.post(f"{first.url}/v1/nodes/shared-1/nonce").json()["nonce"]
    evidence = simulated_evidence(node.tpm, boot, bytes.fromhex(nonce)).to_json()
    assert _submit(second.url, "shared-1", nonce, evidence)["state"] == "trusted"
    # One nonce sent to both workers at once: exactly one submission is fresh.
    nonce = httpx.post(f"{second.url}/v1/nodes/shared-1/nonce").json()["nonce"]
    evidence = simulated_evidence(node.tpm, boot, bytes.fromhex(nonce)).to_json()
    results: list[dict[str, Any]] = []

    def send(url: str) -> None:
        results.append(_submit(url, "shared-1", nonce, evidence))

    threads = [threading.Thread(target=send, args=(url,)) for url in (first.url, second.url) * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r["state"] for r in results) == ["trusted"] + ["untrusted"] * 5
    # Fresh evidence again, then silence: both workers sweep, one marks it stale and alerts.
    nonce = httpx.post(f"{first.url}/v1/nodes/shared-1/nonce").json()["nonce"]
    evidence = simulated_evidence(node.tpm, boot, bytes.fromhex(nonce)).to_json()
    assert _submit(first.url, "shared-1", nonce, evidence)["state"] == "trusted"
    deadline = time.monotonic() + 30
    while httpx.get(f"{second.url}/v1/nodes/shared-1").json()["state"] != "stale":
        assert time.monotonic() < deadline, "never marked stale"
        time.sleep(0.3)
    time.sleep(1.0)  # both workers swept at least once more
    missed = [a for a in receiver.received if a["check"] == "checkin.missed"]
    assert [a["status"] for a in missed] == ["firing"]
    fleet = httpx.get(f"{first.url}/v1/fleet").json()
    assert fleet["states"]["stale"] == 1
    if CHROMIUM is not None:
        _check_page_in_chromium(second.url, tmp_path)


def _check_page_in_chromium(url: str, workdir: Path) -> None:
    """The page as a browser renders it: the node's row, its state and the failed check."""
    browser = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        f"--user-data-dir={workdir / 'chromium'}", "--window-size=1200,700",
    ]  # fmt: skip
    dom = run_host([*browser, "--dump-dom", url + "/"], timeout=120).text
    assert 'id="node-shared-1" data-state="stale"' in dom
    assert '<b id="count-stale">1</b>' in dom
    assert "nonce.fresh" not in dom  # the newest evidence passed; stale is the only problem
    assert '<code class="finding">checkin.missed</code>' in dom
    screenshot = workdir / "fleet.png"
    run_host([*browser, f"--screenshot={screenshot}", url + "/"], timeout=120)
    assert screenshot.stat().st_size > 1000
