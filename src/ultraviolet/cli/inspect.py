"""`uvctl inspect IMAGE`: show what a disk image holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ultraviolet.verify.inspect import inspect_image, render_text
from ultraviolet.verify.trust import load_certificates


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show partitions, verity, verity-sig and ESP contents of a disk image",
        description=(
            "Read a disk image file (no root, no loop devices) and show its partitions (DPS "
            "types, UUIDs, labels, offsets, flags), dm-verity superblocks and whether the data "
            "matches the tree, verity-sig contents, and the ESP: boot loader and UKIs with "
            "their sections, command line, usrhash=, os-release, uname and boot counters."
        ),
    )
    parser.add_argument("image", type=Path, help="disk image file")
    parser.add_argument(
        "--trust",
        type=Path,
        action="append",
        default=[],
        metavar="CERT",
        help="certificate (PEM/DER) to check verity-sig signatures against; repeatable",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    info = inspect_image(args.image, load_certificates(args.trust))
    print(json.dumps(info, indent=2) if args.json else render_text(info))
    return 0
