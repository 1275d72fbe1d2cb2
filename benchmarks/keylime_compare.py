"""Full attestation verifications per second per core: ours against Keylime's verifier, on the
same evidence, side by side.

    python benchmarks/keylime_compare.py [--nodes 16] [--iterations 100] [--rounds 3]

Keylime 7.14.3 (PyPI) is installed into its own venv under the cache directory
(cache_dir()/keylime-venv, made on demand with the host's python3 -m venv and pip; with our
cryptography version, so that both sides verify signatures with the same OpenSSL build).
benchmarks/keylime_driver.py then runs Keylime's verifier code in a child process of that
venv's Python: `Tpm().check_quote` on the quote string ("r" TPMS_ATTEST : TPMT_SIGNATURE : PCR
blob, base64), the AK as TPM2B_PUBLIC, the nonce, the binary UEFI event log and a measured-boot
policy with its refstate (see the driver for the policy); the log goes through `tpm2_eventlog`,
a subprocess per verification as in Keylime's verifier: tpm2-tools 5.7 of the tools chroot, run
with that chroot's loader behind a /bin/sh wrapper (whose cost is measured and shown).

What dominates Keylime's own CPU (cProfile): PyYAML's pure-Python SafeLoader reading
tpm2_eventlog's output, then its unescaping walk over the parsed log, then fork/exec.

The evidence: the simulated fleet of benchmarks/attest.py (Secure Boot, about 60 firmware
events, RSA-2048 AK, each node its own logs). Before timing, both verifiers must accept every
genuine node and refuse each forgery (a flipped PCR value, a bad signature, a foreign UKI,
Secure Boot off, another node's log); otherwise the comparison means nothing and the run fails.

Timing: the same nodes in the same order, the same number of verifications, best of N rounds,
in CPU time (user + system; Keylime's includes the tpm2_eventlog children it waited for).

What each side checks (the honest difference): both check the signature, the nonce, the
pcrDigest, replay the firmware log against PCR 0-7 and judge PCR 4 and 7 events against the
releases, and PCR 11 against the releases' final values. Ours also replays the systemd
userspace log (PCR 11, 15) and the firmware log's PCR 11 and checks the PCR selection; Keylime
has no userspace log, leaves PCR 12, 13, 15 unchecked, and evaluates its policy over every
event (ours reads only what the PCR 4 and 7 digests cover). If PyPI cannot be reached, this
prints why and exits 0 (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import json
import os
import resource
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ultraviolet.attest.appraise import appraise
from ultraviolet.attest.bootlog import clear_caches
from ultraviolet.attest.model import NodeState
from ultraviolet.attest.references import FINAL_PHASE, AcceptedReleases, accept_references
from ultraviolet.attest.simulate import (
    OWNER,
    SecureBootKeys,
    SimulatedRelease,
    SoftwareTpm,
    boot_measurements,
    simulated_evidence,
    synthetic_release,
)
from ultraviolet.errors import ToolError
from ultraviolet.formats.evidence import Evidence, parse_evidence
from ultraviolet.formats.tpm import PublicArea, hash_id, parse_quote, parse_signature
from ultraviolet.tools import cache_dir, run_host, tools

KEYLIME_VERSION = "7.14.3"
# The wheel declares no dependencies; these are what its verifier modules import.
KEYLIME_REQUIREMENTS = ("pyyaml", "pyasn1", "pyasn1-modules", "jsonschema", "lark", "packaging")
DRIVER = Path(__file__).with_name("keylime_driver.py")
POLICY_PCRS = (0, 2, 4, 7, 11, 12, 13, 15)  # as benchmarks/attest.py
_OFFLINE_SIGNS = (
    "Could not find a version",
    "No matching distribution",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "timed out",
    "ConnectTimeout",
    "ProxyError",
)


class KeylimeUnavailable(Exception):
    """Keylime could not be installed; `offline` when PyPI could not be reached."""

    def __init__(self, reason: str, *, offline: bool) -> None:
        super().__init__(reason)
        self.offline = offline


# Keylime's venv.


def _requirements() -> list[str]:
    ours = importlib.metadata.version("cryptography")
    return [f"keylime=={KEYLIME_VERSION}", f"cryptography=={ours}", *KEYLIME_REQUIREMENTS]


def _pip_env() -> dict[str, str]:
    """The caller's proxy and pip settings (run_host passes only PATH, LANG and HOME)."""
    proxies = {"http_proxy", "https_proxy", "no_proxy", "all_proxy"}
    return {k: v for k, v in os.environ.items() if k.lower() in proxies or k.startswith("PIP_")}


def keylime_python() -> Path:
    """The Python of Keylime's venv, created (about 30 s) unless an up-to-date one exists."""
    venv = cache_dir() / "keylime-venv"
    stamp = venv / ".ultraviolet-keylime"
    wanted = " ".join(_requirements()) + "\n"
    try:
        if stamp.read_text() == wanted:
            return venv / "bin" / "python"
    except OSError:
        pass
    staging = venv.with_name(venv.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_host(["python3", "-m", "venv", str(staging)], timeout=120)
        pip = [str(staging / "bin" / "python"), "-m", "pip", "install", "-q"]
        run_host(
            [*pip, "--disable-pip-version-check", *_requirements()], env=_pip_env(), timeout=600
        )
    except ToolError as error:
        shutil.rmtree(staging, ignore_errors=True)
        text = str(error)
        raise KeylimeUnavailable(
            f"installing Keylime {KEYLIME_VERSION} failed: {text}",
            offline=any(sign in text for sign in _OFFLINE_SIGNS),
        ) from error
    stamp = staging / stamp.name
    stamp.write_text(wanted)
    shutil.rmtree(venv, ignore_errors=True)
    staging.rename(venv)  # the venv's python finds its site-packages relative to itself
    return venv / "bin" / "python"


# Our evidence in Keylime's input forms.


def pcr_blob(evidence: Evidence) -> bytes:
    """The quoted PCR values as tpm2_quote's --pcr output, which Keylime parses: TPML_PCR_SELECTION
    and TPML_DIGESTs as tpm2-tss lays them out in memory (little-endian, padded)."""
    selections = parse_quote(evidence.quote).selections
    if len(selections) != 1:
        raise ValueError(f"Keylime reads one PCR bank per quote, this one selects {selections}")
    (selection,) = selections
    bitmap = sum(1 << pcr for pcr in selection.pcrs).to_bytes(3, "little")
    entries = [struct.pack("<HB3s2x", hash_id(selection.bank), 3, bitmap)]
    entries += [bytes(8)] * 15  # TPMS_PCR_SELECTION pcrSelections[16]
    values = [evidence.pcrs[selection.bank][pcr] for pcr in sorted(selection.pcrs)]
    chunks = [values[start : start + 8] for start in range(0, len(values), 8)]
    digests = b"".join(
        struct.pack("<I", len(chunk))
        + b"".join(struct.pack("<H", len(v)) + v.ljust(64, b"\0") for v in chunk)
        + bytes(66 * (8 - len(chunk)))
        for chunk in chunks
    )
    return struct.pack("<I", 1) + b"".join(entries) + struct.pack("<I", len(chunks)) + digests


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def keylime_case(evidence: Evidence, ak: PublicArea, nonce: bytes) -> dict[str, str]:
    """check_quote's inputs: quote string, AK as TPM2B_PUBLIC, nonce, boot log (base64)."""
    parts = (evidence.quote, evidence.signature, pcr_blob(evidence))
    return {
        "quote": "r" + ":".join(_b64(part) for part in parts),
        "ak": _b64(ak.to_2b()),
        "nonce": _b64(nonce),
        "boot_log": _b64(evidence.firmware_log),
    }


def keylime_policy(
    releases: Sequence[SimulatedRelease], accepted: AcceptedReleases
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """(refstate for the driver's measured-boot policy, tpm_policy PCR allowlist)."""

    def signatures(role: str) -> list[dict[str, str]]:
        certificates = {getattr(release.keys, role) for release in releases}
        return [{"SignatureOwner": str(OWNER), "SignatureData": c.hex()} for c in certificates]

    chains = [
        {
            "boot_loader": (release.reference.boot_loader_authenticode_sha256 or b"").hex(),
            "uki": release.reference.uki_authenticode_sha256.hex(),
        }
        for release in releases
    ]
    refstate = {"boot_chains": chains, **{role: signatures(role) for role in ("pk", "kek", "db")}}
    final = sorted(
        value.hex()
        for value, predictions in accepted.pcr11.items()
        if any(p.phase == FINAL_PHASE for p in predictions)
    )
    return refstate, {"11": final}


# The evidence: a simulated fleet, and forgeries.


@dataclass(frozen=True)
class Node:
    evidence: Evidence
    ak: PublicArea
    nonce: bytes


@dataclass(frozen=True)
class Fleet:
    nodes: tuple[Node, ...]
    forgeries: Mapping[str, Node]
    releases: tuple[SimulatedRelease, ...]
    accepted: AcceptedReleases


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 1]) + data[index + 1 :]


def simulated_fleet(count: int) -> Fleet:
    keys = SecureBootKeys.generate()
    releases = (synthetic_release("host", "1.0", keys), synthetic_release("host", "1.1", keys))
    accepted = accept_references([release.reference for release in releases], POLICY_PCRS)
    tpms = [SoftwareTpm() for _ in range(min(count, 8))]  # RSA key generation is slow

    def node(number: int, **boot: Any) -> Node:
        nonce = os.urandom(20)
        measured = boot_measurements(releases[number % 2], machine=number, **boot)
        tpm = tpms[number % len(tpms)]
        return Node(simulated_evidence(tpm, measured, nonce), tpm.public, nonce)

    nodes = tuple(node(number) for number in range(count))
    genuine = nodes[0].evidence
    pcrs = {bank: dict(values) for bank, values in genuine.pcrs.items()}
    pcrs["sha256"][7] = _flip(pcrs["sha256"][7], 0)
    signature = _flip(genuine.signature, len(genuine.signature) - 1)
    other_log = nodes[1 % count].evidence.firmware_log if count > 1 else b""
    forgeries = {
        "flipped PCR 7 value": replace(nodes[0], evidence=replace(genuine, pcrs=pcrs)),
        "bad signature": replace(nodes[0], evidence=replace(genuine, signature=signature)),
        "foreign UKI": node(0, uki=hashlib.sha256(b"a foreign UKI").digest()),
        "Secure Boot off": node(0, secure_boot=False),
        "another node's firmware log": replace(
            nodes[0], evidence=replace(genuine, firmware_log=other_log)
        ),
    }
    return Fleet(nodes, forgeries, releases, accepted)


# Running Keylime.


def tpm2_tools_wrappers(bin_dir: Path) -> Path:
    """`tpm2_eventlog` and `tpm2_startup` (Keylime runs both) from the tools chroot's tpm2-tools
    5.7, started with the chroot's own loader and libraries: no namespace to enter per run.
    Debian 12's tpm2-tools 5.4 replays PCR 0 wrong when the log has a StartupLocality event
    (it extends that EV_NO_ACTION), so Keylime would refuse every such genuine log."""
    root = tools().root
    loader = root / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    libraries = root / "usr/lib/x86_64-linux-gnu"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("tpm2_eventlog", "tpm2_startup"):
        wrapper = bin_dir / name
        wrapper.write_text(
            f"#!/bin/sh\nexec {loader} --library-path {libraries} --argv0 {name} "
            f'{root / "usr/bin/tpm2"} "$@"\n'
        )
        wrapper.chmod(0o755)
    return bin_dir


def run_keylime(
    python: Path, fleet: Fleet, checks: Mapping[str, Node], iterations: int, rounds: int
) -> dict[str, Any]:
    """The driver's verdicts on `checks` and its timings on the fleet's nodes."""
    refstate, tpm_policy = keylime_policy(fleet.releases, fleet.accepted)
    job = {
        "nodes": [keylime_case(n.evidence, n.ak, n.nonce) for n in fleet.nodes],
        "checks": {name: keylime_case(n.evidence, n.ak, n.nonce) for name, n in checks.items()},
        "refstate": refstate,
        "tpm_policy": tpm_policy,
        "iterations": iterations,
        "rounds": rounds,
    }
    with tempfile.TemporaryDirectory(prefix="uv-keylime-") as directory:
        # Keylime reads /etc/keylime unless told otherwise; these are the options it consults.
        config = Path(directory) / "verifier.conf"
        config.write_text(
            "[verifier]\nmeasured_boot_policy_name = ultraviolet-uki\n"
            "measured_boot_evaluate = always\nmeasured_boot_imports = []\n"
        )
        bin_dir = tpm2_tools_wrappers(Path(directory) / "bin")
        result = run_host(
            [str(python), str(DRIVER)],
            env={
                "KEYLIME_VERIFIER_CONFIG": str(config),
                "TMPDIR": directory,
                "PATH": f"{bin_dir}:/usr/bin:/bin",
            },
            input=json.dumps(job).encode(),
            timeout=1800,
        )
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def shell_hop(runs: int = 50) -> float:
    """CPU seconds that the /bin/sh wrapper in front of tpm2_eventlog adds to each run."""

    def cost(argv: list[str]) -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        for _ in range(runs):
            run_host(argv)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        spent = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        return spent / runs

    return cost(["/bin/sh", "-c", 'exec "$0"', "/bin/true"]) - cost(["/bin/true"])


# Ours.


def our_failures(node: Node, accepted: AcceptedReleases) -> list[str]:
    clear_caches()
    appraisal = appraise(node.evidence, ak=node.ak, nonce=node.nonce, accepted=accepted)
    if appraisal.state is NodeState.TRUSTED:
        return []
    return [str(finding.id.value) for finding in appraisal.failures]


def cpu_per_call(function: Callable[[int], None], iterations: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for number in range(iterations):
            function(number)
        best = min(best, (time.process_time() - started) / iterations)
    return best


def our_timings(fleet: Fleet, iterations: int, rounds: int) -> dict[str, float]:
    nodes, accepted = fleet.nodes, fleet.accepted
    documents = [node.evidence.to_bytes() for node in nodes]

    def first(number: int) -> None:
        node = nodes[number % len(nodes)]
        clear_caches()
        appraise(node.evidence, ak=node.ak, nonce=node.nonce, accepted=accepted)

    def first_json(number: int) -> None:
        node = nodes[number % len(nodes)]
        clear_caches()
        evidence = parse_evidence(documents[number % len(nodes)])
        appraise(evidence, ak=node.ak, nonce=node.nonce, accepted=accepted)

    def steady(number: int) -> None:
        node = nodes[number % len(nodes)]
        appraise(node.evidence, ak=node.ak, nonce=node.nonce, accepted=accepted)

    def floor(number: int) -> None:
        node = nodes[number % len(nodes)]
        key = node.ak.public_key()
        assert isinstance(key, rsa.RSAPublicKey)
        raw = parse_signature(node.evidence.signature).rsa
        key.verify(raw, node.evidence.quote, padding.PKCS1v15(), hashes.SHA256())

    return {
        name: cpu_per_call(function, iterations, rounds)
        for name, function in (
            ("first", first),
            ("first_json", first_json),
            ("steady", steady),
            ("floor", floor),
        )
    }


def agreement(fleet: Fleet, keylime: Mapping[str, Any]) -> list[str]:
    """Problems with the verdicts: a genuine node refused or a forgery accepted, by either side.
    Also shows what Keylime's quote check alone (no allowlist, no boot log) decides."""
    problems = []
    for name, node in {"genuine": fleet.nodes[0], **fleet.forgeries}.items():
        theirs = keylime["verdicts"][name]["failures"]
        bare = keylime["bare"][name]["failures"]
        ours = our_failures(node, fleet.accepted)
        for side, failures in (("Keylime", theirs), ("ours", ours)):
            if (name == "genuine") != (not failures):
                problems.append(f"{side} {'refused' if failures else 'accepted'} {name}")
        print(
            f"  {name:28s}: Keylime {theirs or 'accepted'} (quote check alone: "
            f"{bare or 'accepted'}); ours {ours or 'accepted'}"
        )
    return problems


def _line(label: str, seconds: float, reference: float, note: str = "") -> None:
    print(
        f"  {label:44s}: {seconds * 1e6:8.1f} us {1 / seconds:7.0f} /s/core"
        f"  {seconds / reference:6.2f}x ours{note}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.nodes < 2 or args.iterations < 1 or args.rounds < 1:
        parser.error("--nodes must be at least 2, --iterations and --rounds at least 1")
    try:
        python = keylime_python()
    except KeylimeUnavailable as error:
        if not error.offline:
            raise
        print(f"keylime comparison skipped: PyPI unreachable ({error})")
        return 0
    fleet = simulated_fleet(args.nodes)
    checks = {"genuine": fleet.nodes[0], **fleet.forgeries}
    try:
        keylime = run_keylime(python, fleet, checks, args.iterations, args.rounds)
    except ToolError as error:
        print(f"Keylime could not be driven: {error}")
        return 1
    print(f"verdicts (Keylime {KEYLIME_VERSION} Tpm.check_quote vs our appraise):")
    problems = agreement(fleet, keylime)
    if not keylime["bare"]["bad signature"]["failures"]:
        print(
            "  note: Keylime's quote check alone passes the bad signature (check_quote takes the "
            "empty str() of InvalidSignature for no error and goes on with no PCRs); only the "
            "allowlist's or boot policy's missing PCRs refuse it"
        )
    if problems:
        print("MISMATCH: " + "; ".join(problems) + " (the comparison would mean nothing)")
        return 1
    report(args, fleet, keylime)
    return 0


def report(args: argparse.Namespace, fleet: Fleet, keylime: dict[str, Any]) -> None:
    """Time ours on the same fleet and print both, per verification, with the ratios."""
    ours = our_timings(fleet, args.iterations, args.rounds)
    print(
        f"{args.nodes} nodes, PCRs {list(POLICY_PCRS)}, best of {args.rounds} x "
        f"{args.iterations} verifications, CPU time per verification:"
    )
    reference = ours["first"]
    full, bare = keylime["timings"]["full"], keylime["timings"]["no_boot_log"]
    _line(
        "Keylime, with boot log (python+tpm2_eventlog)",
        full["python"] + full["tpm2_eventlog"],
        reference,
        f"  (python {full['python'] * 1e6:.0f} us, tpm2_eventlog {full['tpm2_eventlog'] * 1e6:.0f}"
        f" us, wall {full['wall'] * 1e6:.0f} us)",
    )
    _line("Keylime, with boot log, its python alone", full["python"], reference)
    hop = shell_hop()
    _line(
        "Keylime, with boot log, minus our sh wrapper",
        full["python"] + full["tpm2_eventlog"] - hop,
        reference,
    )
    _line("Keylime, quote + PCR 11 allowlist, no boot log", bare["python"], reference)
    _line("ours, first evidence of a boot", ours["first"], reference)
    _line("ours, first evidence, from JSON", ours["first_json"], reference)
    _line("ours, steady state (logs cached)", ours["steady"], reference)
    _line("RSA-2048 signature check alone", ours["floor"], reference)
    keylime_full = full["python"] + full["tpm2_eventlog"]
    print(
        f"ratio: ours verifies {keylime_full / reference:.1f}x as many per core as Keylime with "
        f"the boot log ({keylime_full / ours['first_json']:.1f}x from JSON); Keylime's quote + "
        f"allowlist check without the boot log costs {bare['python'] / reference:.2f}x our full one"
    )


if __name__ == "__main__":
    sys.exit(main())
