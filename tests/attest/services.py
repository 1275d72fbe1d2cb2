"""A running `uvctl attest serve` for tests, and simulated nodes that enrol with it over HTTP
(tests/attest/nodes.py: attest/simulate.py's software TPM as the AK, an RSA EK that answers
TPM2_MakeCredential)."""

from __future__ import annotations

import base64
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ultraviolet.attest.enrolment import ek_fingerprint
from ultraviolet.formats.tpmcredential import activate_credential
from ultraviolet.tools import Spawned, spawn_host

from .nodes import SimulatedNode
from .receivers import free_port, wait_http

__all__ = ["ADMIN", "TOKEN", "Service", "SimulatedNode", "b64", "enrol_over_http"]

TOKEN = "service-test-token-0123"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
UVCTL = Path(sys.executable).with_name("uvctl")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Service:
    database: str
    workdir: Path
    webhook: str
    port: int = field(default_factory=free_port)
    extra: tuple[str, ...] = ()
    process: Spawned | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        token = self.workdir / "token"
        token.write_text(TOKEN)
        self.starts += 1
        name = f"service-{self.port}-{self.starts}.log"
        self.process = spawn_host(
            [
                str(UVCTL), "attest", "serve", "--database", self.database,
                "--listen", f"127.0.0.1:{self.port}", "--admin-token-file", str(token),
                "--webhook", self.webhook, "--maintenance-interval", "0.2", *self.extra,
            ],
            log=self.workdir / name,
        )  # fmt: skip
        wait_http(self.url + "/v1/fleet", timeout=60)

    def kill(self) -> None:
        assert self.process is not None
        self.process.process.kill()  # SIGKILL: no shutdown, no flush
        self.process.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def enrol_over_http(client: httpx.Client, node: SimulatedNode) -> None:
    client.post("/v1/admin/eks", json={"fingerprint": ek_fingerprint(node.ek)}, headers=ADMIN)
    answer = client.post(
        "/v1/enrol",
        json={
            "node_id": node.node_id,
            "ek_public": b64(node.ek.to_2b()),
            "ak_public": b64(node.tpm.public.to_2b()),
        },
    ).json()
    secret = activate_credential(
        node.ek_key, node.ek, node.tpm.public.name(),
        base64.b64decode(answer["credential_blob"]), base64.b64decode(answer["encrypted_secret"]),
    )  # fmt: skip
    path = f"/v1/enrol/{answer['enrolment']}/activate"
    activated = client.post(path, json={"secret": b64(secret)})
    assert activated.status_code == 200, activated.text
