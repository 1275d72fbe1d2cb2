"""The verifier's HTTP service under load, on SQLite and on PostgreSQL, against the appraisal
engine's in-process rate on the same evidence.

    python benchmarks/attest_service.py [--nodes 16] [--seconds 20] [--database both]

One `uvctl attest serve` worker (its own process, default options, no alert sinks) on a fresh
database: a SQLite file, or a private PostgreSQL cluster (testbed/pgserver.py: initdb + pg_ctl,
unix socket, fsync on). N simulated nodes (attest/simulate.py: each its own RSA-2048 AK and EK,
its own OVMF-like Secure Boot log of about 60 events and systemd's userspace log) approve their
EK, enrol over HTTP (MakeCredential / ActivateCredential) and attest once, so the service has
seen every boot before the clock starts. Then each node, one thread each in this process over
loopback, loops for S seconds as fast as it can: ask a nonce, quote with it, submit the evidence.
Every answer must be 200 and `trusted`, else the run reports a mismatch and fails.

Reported per backend: evidence appraised per second (wall clock), p50/p99 latency of the nonce
and of the evidence requests as the nodes see them (so it includes queueing in the service and
this process's own share of the machine), the CPU of the service process (in cores, and per
nonce + evidence round) and of the nodes (this process).

Reference: the appraisal engine in process on the same evidence documents, doing what the
service does per submission (parse the evidence JSON and the node's AK, `appraise` in steady
state with the node's logs cached), in CPU time, best of 3. Two ratios against it, both the
service's overhead (HTTP, JSON validation, nonce bookkeeping, the evidence record, the
database): the service's rate / the in-process rate per core (wall clock, so it also shows a
busy machine), and the service's CPU per round / the appraisal's (robust to other load; the
database server's own CPU is not counted).
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from ultraviolet.attest.appraise import appraise
from ultraviolet.attest.enrolment import ek_fingerprint
from ultraviolet.attest.model import NodeState
from ultraviolet.attest.references import AcceptedReleases, accept_references
from ultraviolet.attest.simulate import (
    SIMULATED_PCRS,
    SecureBootKeys,
    SimulatedRelease,
    SoftwareTpm,
    boot_measurements,
    synthetic_release,
)
from ultraviolet.formats.evidence import Evidence, parse_evidence
from ultraviolet.formats.reference import render_reference
from ultraviolet.formats.tpm import (
    ALG_NULL,
    ALG_RSA,
    PublicArea,
    RsaParameters,
    Scheme,
    SymmetricDefinition,
    hash_id,
    parse_public_2b,
)
from ultraviolet.formats.tpmcredential import ALG_AES, ALG_CFB, activate_credential
from ultraviolet.testbed.pgserver import PostgresServer, postgres_bindir
from ultraviolet.tools import Spawned, spawn_host

SERVICE_PCRS = (4, 7, 11)  # `uvctl attest serve`'s default --pcrs
# TCG default EK template: fixedTPM|fixedParent|sensitiveDataOrigin|adminWithPolicy|
# restricted|decrypt, AES-128-CFB for the objects it protects.
EK_ATTRIBUTES = 0x000300B2
UVCTL = Path(sys.executable).with_name("uvctl")
MAX_NODES = 256  # one client thread each


@dataclass
class Node:
    """A booted node: quotes its PCRs with its AK; enrols with its EK."""

    node_id: str
    tpm: SoftwareTpm
    ek_key: rsa.RSAPrivateKey
    firmware_log: bytes
    userspace_log: bytes
    ek: PublicArea = field(init=False)

    def __post_init__(self) -> None:
        modulus = self.ek_key.public_key().public_numbers().n.to_bytes(256, "big")
        parameters = RsaParameters(
            SymmetricDefinition(ALG_AES, 128, ALG_CFB), Scheme(ALG_NULL), 2048, 0, modulus
        )
        sha256 = hash_id("sha256")
        self.ek = PublicArea(ALG_RSA, sha256, EK_ATTRIBUTES, bytes(32), parameters)

    def evidence(self, nonce: bytes) -> Evidence:
        quote, signature, values = self.tpm.quote(SIMULATED_PCRS, nonce)
        return Evidence(quote, signature, values, self.firmware_log, self.userspace_log, ())


def fleet(count: int) -> tuple[list[Node], SimulatedRelease]:
    release = synthetic_release("host", "1.0", SecureBootKeys.generate())
    nodes = []
    for number in range(count):
        boot = boot_measurements(release, machine=number)
        tpm = SoftwareTpm()
        tpm.run(boot)  # booted once; it quotes the same PCRs for every nonce, as a host does
        ek_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        nodes.append(Node(f"load-{number}", tpm, ek_key, boot.firmware_log, boot.userspace))
    return nodes, release


# The reference: the appraisal engine in this process.


def cpu_per_call(function: Callable[[], None], seconds: float) -> float:
    calls, started = 0, time.process_time()
    while (elapsed := time.process_time() - started) < seconds:
        for _ in range(20):
            function()
        calls += 20
    return elapsed / calls


def in_process_seconds(nodes: Sequence[Node], accepted: AcceptedReleases) -> float:
    """CPU seconds per evidence of the service's appraisal step alone, best of 3 rounds."""
    submissions = []
    for node in nodes:
        nonce = os.urandom(32)
        document = node.evidence(nonce).to_bytes()
        submissions.append((document, node.tpm.public.to_2b(), nonce))
    cursor = [0]

    def appraise_next() -> None:
        cursor[0] = (cursor[0] + 1) % len(submissions)
        document, ak, nonce = submissions[cursor[0]]
        evidence = parse_evidence(document)
        result = appraise(evidence, ak=parse_public_2b(ak), nonce=nonce, accepted=accepted)
        if result.state is not NodeState.TRUSTED:
            raise SystemExit(f"MISMATCH: in process, a genuine node is {result.state}")

    for _ in submissions:  # the service has seen every boot before its clock starts, too
        appraise_next()
    return min(cpu_per_call(appraise_next, 1.0) for _ in range(3))


# The service under load.


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def running_service(database: str, work: Path) -> Iterator[tuple[str, str, Spawned]]:
    """(base URL, admin token, process) of a `uvctl attest serve` on `database`."""
    token = secrets.token_hex(16)
    (work / "token").write_text(token)
    port = free_port()
    log = work / "service.log"
    service = spawn_host(
        [
            str(UVCTL), "attest", "serve", "--database", database,
            "--listen", f"127.0.0.1:{port}", "--admin-token-file", str(work / "token"),
        ],
        log=log,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if not service.running() or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise SystemExit(f"uvctl attest serve did not come up:\n{tail}")
            try:
                if httpx.get(url + "/v1/fleet", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url, token, service
    finally:
        service.stop()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def enrol(client: httpx.Client, admin: dict[str, str], node: Node) -> None:
    fingerprint = ek_fingerprint(node.ek)
    client.post("/v1/admin/eks", json={"fingerprint": fingerprint}, headers=admin)
    body = {
        "node_id": node.node_id,
        "ek_public": b64(node.ek.to_2b()),
        "ek_certificate": None,
        "ak_public": b64(node.tpm.public.to_2b()),
    }
    answer = expect(client.post("/v1/enrol", json=body), 201).json()
    secret = activate_credential(
        node.ek_key, node.ek, node.tpm.public.name(),
        base64.b64decode(answer["credential_blob"]),
        base64.b64decode(answer["encrypted_secret"]),
    )  # fmt: skip
    activate = f"/v1/enrol/{answer['enrolment']}/activate"
    expect(client.post(activate, json={"secret": b64(secret)}), 200)


def expect(response: httpx.Response, status: int) -> httpx.Response:
    if response.status_code != status:
        raise SystemExit(
            f"MISMATCH: {response.request.method} {response.request.url.path} answered "
            f"{response.status_code}, expected {status}: {response.text[:500]}"
        )
    return response


@dataclass
class Load:
    nonce_latency: list[float] = field(default_factory=list)
    evidence_latency: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def attest(client: httpx.Client, node: Node, load: Load) -> None:
    """One round of a node: nonce, quote, evidence; latencies and any failure into `load`."""
    started = time.perf_counter()
    answer = client.post(f"/v1/nodes/{node.node_id}/nonce")
    asked = time.perf_counter()
    if answer.status_code != 200:
        with load.lock:
            load.failures.append(f"nonce {answer.status_code}: {answer.text[:200]}")
        return
    nonce = answer.json()["nonce"]
    body = {"nonce": nonce, "evidence": node.evidence(bytes.fromhex(nonce)).to_json()}
    sending = time.perf_counter()
    result = client.post(f"/v1/nodes/{node.node_id}/evidence", json=body)
    done = time.perf_counter()
    state = result.json().get("state") if result.status_code == 200 else None
    with load.lock:
        load.nonce_latency.append(asked - started)
        load.evidence_latency.append(done - sending)
        if state != "trusted":
            load.failures.append(f"evidence {result.status_code} {state}: {result.text[:200]}")


def run_load(url: str, nodes: Sequence[Node], seconds: float) -> tuple[Load, float]:
    load = Load()
    deadline = time.monotonic() + seconds

    def node_loop(node: Node) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while time.monotonic() < deadline:
                attest(client, node, load)

    threads = [threading.Thread(target=node_loop, args=(node,)) for node in nodes]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return load, time.monotonic() - started


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Result:
    evidence: int
    elapsed: float
    service_cores: float
    client_cores: float
    nonce: tuple[float, float]  # p50, p99 seconds
    latency: tuple[float, float]

    @property
    def rate(self) -> float:
        return self.evidence / self.elapsed


def p50_p99(samples: Sequence[float]) -> tuple[float, float]:
    if len(samples) < 2:
        return (samples[0], samples[0]) if samples else (0.0, 0.0)
    return statistics.median(samples), statistics.quantiles(samples, n=100)[98]


def measure(
    database: str, work: Path, nodes: Sequence[Node], release: SimulatedRelease, seconds: float
) -> Result:
    with running_service(database, work) as (url, token, service):
        admin = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, timeout=60) as client:
            document = render_reference(release.reference).encode()
            expect(client.put("/v1/admin/releases/host/1.0", content=document, headers=admin), 204)
            warm_up = Load()
            for node in nodes:
                enrol(client, admin, node)
                attest(client, node, warm_up)
        if warm_up.failures:
            raise SystemExit(f"MISMATCH: first evidence: {warm_up.failures[0]}")
        service_before, ours_before = process_cpu(service.process.pid), time.process_time()
        load, elapsed = run_load(url, nodes, seconds)
        service_cores = (process_cpu(service.process.pid) - service_before) / elapsed
        client_cores = (time.process_time() - ours_before) / elapsed
    if load.failures:
        count = len(load.failures)
        raise SystemExit(f"MISMATCH: {count} rounds failed, first: {load.failures[0]}")
    return Result(
        len(load.evidence_latency), elapsed, service_cores, client_cores,
        p50_p99(load.nonce_latency), p50_p99(load.evidence_latency),
    )  # fmt: skip


def on_backend(
    backend: str, nodes: Sequence[Node], release: SimulatedRelease, seconds: float
) -> Result:
    with tempfile.TemporaryDirectory(prefix="uv-bench-") as directory:
        work = Path(directory)
        if backend == "sqlite":
            return measure(str(work / "attest.db"), work, nodes, release, seconds)
        server = PostgresServer.create()
        try:
            server.start()
            database = server.create_database("attest_bench")
            return measure(database, work, nodes, release, seconds)
        finally:
            server.destroy()


def milliseconds(pair: tuple[float, float]) -> str:
    return f"p50 {pair[0] * 1e3:6.1f} ms  p99 {pair[1] * 1e3:6.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    args = parser.parse_args()
    if not 1 <= args.nodes <= MAX_NODES:
        parser.error(f"--nodes must be 1-{MAX_NODES} (one client thread each)")
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    backends: tuple[str, ...] = ("sqlite", "postgresql")
    if args.database != "both":
        backends = (args.database,)
    if "postgresql" in backends and postgres_bindir() is None:
        print("PostgreSQL is not installed (scripts/bootstrap installs it): measured without it")
        backends = tuple(backend for backend in backends if backend != "postgresql")
    nodes, release = fleet(args.nodes)
    accepted = accept_references([release.reference], SERVICE_PCRS)
    reference = in_process_seconds(nodes, accepted)
    results = {backend: on_backend(backend, nodes, release, args.seconds) for backend in backends}
    print(
        f"attestation service under load: one `uvctl attest serve` worker, {args.nodes} nodes,"
        f" {args.seconds:g} s per backend, {os.cpu_count()} cores shared with the nodes"
    )
    print(
        f"  in-process appraisal (reference): {1 / reference:6.0f} /s/core"
        f"  ({reference * 1e3:.2f} ms CPU per evidence)"
    )
    for backend, result in results.items():
        print(
            f"  {backend:10s}: {result.rate:6.1f} evidence/s ({result.evidence} in"
            f" {result.elapsed:.1f} s)  {result.rate * reference:.4f}x the in-process rate"
        )
        print(f"  {'':10s}  evidence {milliseconds(result.latency)}")
        print(f"  {'':10s}  nonce    {milliseconds(result.nonce)}")
        per_round = result.service_cores / result.rate
        print(
            f"  {'':10s}  service CPU {result.service_cores:.2f} cores,"
            f" {per_round * 1e3:.2f} ms per nonce + evidence ({per_round / reference:.0f}x the"
            f" appraisal); nodes {result.client_cores:.2f} cores"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
