"""`uvctl verify IMAGE --trust CERT`: the offline chain check."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ultraviolet.verify.chain import verify_image
from ultraviolet.verify.trust import load_certificates


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check every link of an image's chain of trust offline",
        description=(
            "Check a disk image offline: GPT (both headers, CRCs, DPS types), the usr hash tree "
            "against the data, the verity-sig signature, root hash = partition UUIDs = usrhash= "
            "of every UKI, and the Authenticode signatures of systemd-boot and the UKIs. "
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
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = verify_image(args.image, load_certificates(args.trust))
    print(report.render_json() if args.json else report.render_text())
    return 0 if report.ok else 1
