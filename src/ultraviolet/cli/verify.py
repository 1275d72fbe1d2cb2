"""`uvctl verify IMAGE --trust CERT`: the offline chain check."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ultraviolet.policy import load_policy
from ultraviolet.verify.chain import verify_image
from ultraviolet.verify.measured import Expectations
from ultraviolet.verify.trust import load_certificates, load_reference


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check every link of an image's chain of trust offline",
        description=(
            "Check a disk image offline: GPT (both headers, CRCs, DPS types), the usr hash tree "
            "against the data, the verity-sig signature, root hash = partition UUIDs = usrhash= "
            "of every UKI, and the Authenticode signatures of systemd-boot and the UKIs; the "
            "signed IPE policy in each UKI's initrd (against the node policy with --policy); "
            "with --reference, the release's UKI digest, usr root hash and predicted PCR 11 per "
            "profile and boot phase against its reference.json. "
            "Exit status: 0 all checks pass, 1 a check failed, 2 unusable input."
        ),
    )
    parser.add_argument("image", type=Path, help="disk image file")
    parser.add_argument(
        "--trust",
        type=Path,
        action="append",
        required=True,
        metavar="CERT",
        help="trusted certificate (PEM/DER): Secure Boot db / verity signer; repeatable",
    )
    parser.add_argument(
        "--policy", type=Path, metavar="NODE.toml", help="node policy the image must implement"
    )
    parser.add_argument(
        "--reference",
        type=Path,
        metavar="reference.json",
        help="the release's reference values (from uvctl build)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    expected = Expectations(
        policy=load_policy(args.policy) if args.policy else None,
        reference=load_reference(args.reference) if args.reference else None,
    )
    report = verify_image(args.image, load_certificates(args.trust), expected)
    print(report.render_json() if args.json else report.render_text())
    return 0 if report.ok else 1
