"""`uvctl vm run IMAGE --keys DIR`: boot an image with Secure Boot (our keys) and a TPM."""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from ultraviolet.build.keyset import load_keys
from ultraviolet.testbed.accel import ProbeResult, probe_kvm
from ultraviolet.testbed.vm import OVMF_CODE, OVMF_VARS, VmConfig, boot
from ultraviolet.tools import tools


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "vm",
        help="boot an image in QEMU with OVMF Secure Boot and swtpm",
        description="Boot a disk image under QEMU/TCG with OVMF Secure Boot, the key set's "
        "PK/KEK/db enrolled, and swtpm, through a grown qcow2 overlay (the image is never "
        "changed). Stops when --until matches the serial console, on emergency mode/panic, or "
        "at --timeout. Exit 0 only if --until matched. Needs root.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    run = actions.add_parser("run", help="boot IMAGE and watch its serial console")
    run.add_argument("image", type=Path)
    run.add_argument("--keys", type=Path, required=True, help="key set directory (keys init)")
    run.add_argument("--until", default=r"login: ", help="regex that ends the boot successfully")
    run.add_argument("--timeout", type=float, default=420.0, help="seconds (default 420)")
    run.add_argument(
        "--disk-size",
        default="8G",
        help="virtual size of the booted disk (first boot grows into it)",
    )
    run.add_argument("--workdir", type=Path, help="keep the VM files here (default: temporary)")
    run.add_argument(
        "--accel",
        choices=("auto", "kvm", "tcg"),
        default="auto",
        help="auto: probe KVM with the Secure Boot firmware, fall back to TCG (default)",
    )
    run.set_defaults(func=run_vm)


def run_vm(args: argparse.Namespace) -> int:
    keys = load_keys(args.keys)
    with tempfile.TemporaryDirectory(prefix="uv-accel-", dir="/var/tmp") as probe_dir:
        if args.accel == "auto":
            probe = probe_kvm(tools(), Path(probe_dir), OVMF_CODE, OVMF_VARS)
        else:
            probe = ProbeResult(args.accel, "--accel", 0.0)
    print(f"accelerator: {probe.accelerator} ({probe.reason})", file=sys.stderr)
    config = VmConfig(
        image=args.image.resolve(),
        pk=keys.signer("pk").certificate_path,
        kek=keys.signer("kek").certificate_path,
        db=keys.signer("db").certificate_path,
        disk_size=args.disk_size,
        timeout=args.timeout,
        accelerator=probe.accelerator,
    )
    with tempfile.TemporaryDirectory(prefix="uv-vm-", dir="/var/tmp") as temporary:
        work = args.workdir or Path(temporary)
        result = boot(config, re.compile(args.until), work, tools())
        print(result.console()[-4000:] if result.ok else result.explain(4000))
        print(
            f"verdict: {result.verdict} after {result.seconds:.0f} s (serial log {result.serial})"
        )
    return 0 if result.ok else 1
