"""Attestation verifications per second per core, against the cost of the quote's signature
check alone (the physical floor of any verifier).

    python benchmarks/attest.py [--nodes 64] [--seconds 2] [--rounds 3]

A simulated fleet (attest/simulate.py): every node boots a release under Secure Boot (an
OVMF-like measured boot, about 60 firmware log events and 10 systemd userspace records, each
node its own logs) on a software TPM and answers a challenge with an RSA-2048 RSASSA quote over
the policy's PCRs, as our agent does (it quotes the PCRs its policy names). A full verification
is `appraise`: parse the quote, signature and both logs, check the signature, nonce, PCR
selection and digest, replay both logs against the quoted PCRs, judge PCR 4, 7 and 11 against
two accepted releases, and IPE events. Measured in CPU time (so "per core" even on a busy
machine), best of N rounds, interleaved with the floor:

  floor: pyca/cryptography RSA PKCS#1 v1.5 verify of the quote's signature;
  first evidence of a boot: the node's logs never seen before (log caches cleared each time:
  both logs are read, every record's digest replayed, PCR 4 and 7 events hashed and read);
  steady state: the node re-attests with the logs it sent last time (the facts read from
  its logs are cached by their SHA-256, a few KB per node, up to CACHED_LOGS nodes);
  "from JSON": the same, starting from the evidence document as submitted (parse_evidence:
  JSON, base64 of the quote, signature and logs, PCR values), as the service does per
  submission.

What stays cached in "first evidence" (never a log, a PCR's replay or a quote): the enrolled
AK's key object (per AK: a known node's first evidence of a boot), the layout read from a Spec
ID record (per distinct record bytes), and the certificates read from a PK, KEK, db or db
entry value measured into PCR 7 (per distinct value: a fleet measures the same ones into every
node, each event is still hashed against its digest). "PCR 7 values never seen" clears those
too, each time.

Keylime, the reference verifier in the field, is measured on the same kind of evidence by
benchmarks/keylime_compare.py (its verifier's quote and measured-boot checks, installed from
PyPI into a venv of its own); here the floor is the reference.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ultraviolet.attest.appraise import appraise
from ultraviolet.attest.bootlog import CACHED_LOGS, clear_caches
from ultraviolet.attest.model import NodeState
from ultraviolet.attest.references import AcceptedReleases, accept_references
from ultraviolet.attest.simulate import (
    SecureBootKeys,
    SoftwareTpm,
    boot_measurements,
    simulated_evidence,
    synthetic_release,
)
from ultraviolet.formats.eventlog import parse_event_log, parse_userspace_log
from ultraviolet.formats.evidence import Evidence, parse_evidence
from ultraviolet.formats.tpm import PublicArea, parse_signature

POLICY_PCRS = (0, 2, 4, 7, 11, 12, 13, 15)
Node = tuple[Evidence, PublicArea, bytes]


def fleet(count: int) -> tuple[list[Node], AcceptedReleases]:
    keys = SecureBootKeys.generate()
    old, new = synthetic_release("host", "1.0", keys), synthetic_release("host", "1.1", keys)
    accepted = accept_references([old.reference, new.reference], POLICY_PCRS)
    tpms = [SoftwareTpm() for _ in range(min(count, 8))]  # RSA key generation is slow
    nodes = []
    for number in range(count):
        nonce = os.urandom(20)
        boot = boot_measurements(new if number % 2 else old, machine=number)
        tpm = tpms[number % len(tpms)]
        evidence = simulated_evidence(tpm, boot, nonce, pcrs=POLICY_PCRS)
        nodes.append((evidence, tpm.public, nonce))
    return nodes, accepted


def cpu_per_call(function: Callable[[], None], seconds: float) -> float:
    calls, started = 0, time.process_time()
    while (elapsed := time.process_time() - started) < seconds:
        for _ in range(50):
            function()
        calls += 50
    return elapsed / calls


def measurements(
    nodes: Sequence[Node], accepted: AcceptedReleases, seconds: float
) -> dict[str, float]:
    cursor = [0]

    def next_node() -> Node:
        cursor[0] = (cursor[0] + 1) % len(nodes)
        return nodes[cursor[0]]

    verifiers = []
    for evidence, ak, _ in nodes:
        key = ak.public_key()
        assert isinstance(key, rsa.RSAPublicKey)
        verifiers.append((parse_signature(evidence.signature).rsa, key, evidence.quote))

    def floor() -> None:
        signature, key, message = verifiers[cursor[0]]
        cursor[0] = (cursor[0] + 1) % len(nodes)
        key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())

    def steady() -> None:
        evidence, ak, nonce = next_node()
        appraise(evidence, ak=ak, nonce=nonce, accepted=accepted)

    def first() -> None:
        clear_caches()
        steady()

    def first_unshared() -> None:
        clear_caches(shared_values=True)
        steady()

    documents = [evidence.to_bytes() for evidence, _, _ in nodes]

    def steady_json() -> None:
        _, ak, nonce = next_node()
        appraise(parse_evidence(documents[cursor[0]]), ak=ak, nonce=nonce, accepted=accepted)

    def first_json() -> None:
        clear_caches()
        steady_json()

    return {
        "floor": cpu_per_call(floor, seconds),
        "first": cpu_per_call(first, seconds),
        "first_unshared": cpu_per_call(first_unshared, seconds),
        "steady": cpu_per_call(steady, seconds),
        "first_json": cpu_per_call(first_json, seconds),
        "steady_json": cpu_per_call(steady_json, seconds),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not 1 <= args.nodes <= CACHED_LOGS:
        parser.error(f"--nodes must be 1-{CACHED_LOGS} (the log cache holds that many)")
    nodes, accepted = fleet(args.nodes)
    for evidence, ak, nonce in nodes:
        appraisal = appraise(evidence, ak=ak, nonce=nonce, accepted=accepted)
        if appraisal.state is not NodeState.TRUSTED:
            print(f"MISMATCH: a genuine node is {appraisal.state}: {appraisal.failures}")
            return 1
    evidence = nodes[0][0]
    events = len(parse_event_log(evidence.firmware_log).events) - 1  # without the Spec ID
    records = len(parse_userspace_log(evidence.userspace_log))
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, value in measurements(nodes, accepted, args.seconds).items():
            best[name] = min(best.get(name, value), value)
    print(
        f"attestation appraisal, {args.nodes} nodes, {events} firmware + {records} userspace "
        f"log records, PCRs {list(POLICY_PCRS)}, best of {args.rounds} x {args.seconds:g} s CPU"
    )
    floor = best["floor"]
    for name, label in (
        ("floor", "RSA-2048 signature check alone"),
        ("first", "full, first evidence of a boot"),
        ("first_unshared", "first evidence, PCR 7 values never seen"),
        ("steady", "full, steady state (logs cached)"),
        ("first_json", "first evidence, from JSON"),
        ("steady_json", "steady state, from JSON"),
    ):
        value = best[name]
        print(
            f"  {label:40s}: {value * 1e6:7.1f} us  {1 / value:8.0f} /s/core"
            f"  {value / floor:5.2f}x the floor"
        )
    print(
        "  (a first evidence still finds cached: AK key objects per AK, Spec ID layouts and, but\n"
        "  in the row that clears them, PCR 7 values' certificates; never a log or a replay)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
