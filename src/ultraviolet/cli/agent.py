"""`uvctl agent`: the node's attestation agent (enrol once, then answer the verifier's nonces)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from ultraviolet.errors import AttestationError
from ultraviolet.node.agent import FIRMWARE_LOG, USERSPACE_LOG, Agent, AgentConfig, pcr_selection
from ultraviolet.node.ipe import AuditLogSource, IpeSource, JournalSource
from ultraviolet.node.tpm import DEFAULT_TCTI, TpmDriver
from ultraviolet.policy.load import load_policy
from ultraviolet.tools import tools

DEFAULT_STATE_DIR = Path("/var/lib/ultraviolet/agent")
MACHINE_ID = Path("/etc/machine-id")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "agent",
        help="run the node's attestation agent",
        description="Enrol this node's TPM attestation key with the verifier (EK public key + "
        "credential activation), then answer its nonce challenges with a TPM quote, the "
        "firmware event log, systemd's measurement log and new IPE audit records. Retries "
        "with backoff while the verifier is away; never part of boot (docs/attest-agent.md).",
    )
    parser.add_argument("--policy", type=Path, help="node policy: [attestation] pcrs, verifier")
    parser.add_argument("--verifier", help="verifier base URL (default: the policy's)")
    parser.add_argument("--node-id", help="node id (default: /etc/machine-id)")
    parser.add_argument("--pcrs", help="PCRs to quote, e.g. 0,2,4,7,11 (default: the policy's)")
    parser.add_argument("--banks", default="sha256", help="PCR banks to quote (default sha256)")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--tcti", default=DEFAULT_TCTI, help="TPM (default %(default)s)")
    parser.add_argument(
        "--ca-file",
        type=Path,
        help="CA certificate(s) (PEM) the verifier's TLS certificate is "
        "checked against (default: the system's)",
    )
    parser.add_argument("--ek-algorithm", choices=("rsa", "ecc"), default="rsa")
    parser.add_argument("--interval", type=float, default=300.0, help="seconds between reports")
    parser.add_argument("--firmware-log", type=Path, default=FIRMWARE_LOG)
    parser.add_argument("--userspace-log", type=Path, default=USERSPACE_LOG)
    parser.add_argument(
        "--ipe-audit-log",
        type=Path,
        help="read IPE records from this audit.log instead of the journal",
    )
    parser.add_argument(
        "--tools-chroot",
        action="store_true",
        help="run tpm2-tools from uvctl's tools chroot (a development machine without them; "
        "e.g. with --tcti swtpm:path=SOCKET)",
    )
    parser.add_argument("--once", action="store_true", help="enrol if needed, report once, exit")
    parser.set_defaults(func=run_agent)


def _configuration(args: argparse.Namespace) -> tuple[str, str, list[int]]:
    policy = load_policy(args.policy) if args.policy else None
    verifier = args.verifier or (policy.attestation.verifier_url if policy else "")
    if not verifier:
        raise AttestationError("no verifier: give --verifier or a policy with verifier_url")
    if args.pcrs:
        try:
            pcrs = [int(part) for part in args.pcrs.split(",") if part.strip()]
        except ValueError:
            raise AttestationError(f"--pcrs {args.pcrs!r}: expected numbers 0-23") from None
    elif policy:
        pcrs = list(policy.attestation.pcrs)
    else:
        raise AttestationError("no PCRs: give --pcrs or a policy")
    node_id = args.node_id
    if not node_id:
        try:
            node_id = MACHINE_ID.read_text().strip()
        except OSError as exc:
            raise AttestationError(f"no --node-id and no machine id: {exc}") from exc
    return verifier, node_id, pcrs


def _driver(args: argparse.Namespace) -> TpmDriver:
    if not args.tools_chroot:
        return TpmDriver(args.state_dir, tcti=args.tcti, ek_algorithm=args.ek_algorithm)
    # The chroot sees only what is bound into it: the socket's directory of a socket TCTI.
    kind, _, options = args.tcti.partition(":")
    binds = []
    for option in options.split(","):
        key, _, value = option.partition("=")
        if kind in ("swtpm", "mssim") and key == "path" and value:
            binds.append(Path(value).parent)
    return TpmDriver(
        args.state_dir,
        tcti=args.tcti,
        ek_algorithm=args.ek_algorithm,
        chroot=tools(),
        binds=binds,
    )


def run_agent(args: argparse.Namespace) -> int:
    verifier, node_id, pcrs = _configuration(args)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    ipe: IpeSource = (
        AuditLogSource(args.ipe_audit_log, args.state_dir)
        if args.ipe_audit_log
        else JournalSource(args.state_dir)
    )
    config = AgentConfig(
        node_id=node_id,
        verifier_url=verifier,
        state_dir=args.state_dir,
        pcrs=pcr_selection(pcrs, [bank for bank in args.banks.split(",") if bank]),
        ipe=ipe,
        interval=args.interval,
        firmware_log=args.firmware_log,
        userspace_log=args.userspace_log,
        ca_file=args.ca_file,
    )
    tpm = _driver(args)
    logging.getLogger("ultraviolet.node").setLevel(logging.INFO)
    agent = Agent(config, tpm)
    if args.once:
        answer = agent.step()
        print(f"{node_id}: {answer.get('state', 'submitted')}")
        return 0
    agent.run()
    return 0
