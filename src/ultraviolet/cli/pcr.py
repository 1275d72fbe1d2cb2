"""`uvctl pcr predict UKI`: the PCR 11 values a UKI produces at each boot phase."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ultraviolet.diskimage import map_file
from ultraviolet.formats.pcr import BANKS, predict_pcr11
from ultraviolet.formats.uki import parse_uki


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "pcr",
        help="predict TPM PCR values",
        description="Predict the TPM PCR values a node must show (computed in pure Python; "
        "equal to systemd-measure calculate).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    predict = actions.add_parser(
        "predict",
        help="PCR 11 per boot phase from a UKI",
        description="PCR 11 after enter-initrd, leave-initrd, sysinit and ready, from the "
        "sections of a unified kernel image as systemd-stub measures them.",
    )
    predict.add_argument("uki", type=Path, help="UKI (.efi) file")
    predict.add_argument("--bank", choices=BANKS, default="sha256", help="PCR bank")
    predict.add_argument("--profile", type=int, help="profile number of a multi-profile UKI")
    predict.add_argument("--json", action="store_true", help="print JSON")
    predict.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    with map_file(args.uki) as data:
        values = predict_pcr11(parse_uki(data), profile=args.profile, bank=args.bank)
    if args.json:
        entries = [
            {"phase": phase, "pcr": 11, "hash": value.hex()} for phase, value in values.items()
        ]
        print(json.dumps({args.bank: entries}, indent=2))
    else:
        for phase, value in values.items():
            print(f"11:{args.bank}={value.hex()}  {phase}")
    return 0
