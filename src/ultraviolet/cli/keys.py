"""`uvctl keys`: create or show a fleet's signing material."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from ultraviolet.build.keyset import ROLES, KeySet, init_keys, load_keys


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "keys",
        help="create or show signing keys (Secure Boot PK/KEK/db, verity, IPE, update)",
        description="Signing material lives in a directory (mode 0700, keys 0600) described by "
        "keys.toml. verity and IPE signatures default to the db key, which the kernel trusts "
        "through the platform keyring. Keys are never copied into images.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = actions.add_parser("init", help="generate a new key set in DIR")
    init.add_argument("directory", type=Path)
    init.add_argument("--organisation", default="Ultraviolet", help="name in the certificates")
    init.set_defaults(func=run_init)
    show = actions.add_parser("show", help="list the roles and certificate fingerprints")
    show.add_argument("directory", type=Path)
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=run_show)


def _describe(keys: KeySet) -> list[dict[str, str]]:
    rows = []
    for role in ROLES:
        signer = keys.signer(role)
        der = signer.certificate.public_bytes(serialization.Encoding.DER)
        rows.append(
            {
                "role": role,
                "subject": signer.certificate.subject.rfc4514_string(),
                "sha256": hashlib.sha256(der).hexdigest(),
                "key": str(signer.key_path),
                "certificate": str(signer.certificate_path),
            }
        )
    return rows


def run_init(args: argparse.Namespace) -> int:
    keys = init_keys(args.directory, organisation=args.organisation)
    print(f"created key set in {keys.directory}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    rows = _describe(load_keys(args.directory))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['role']:<7} {row['sha256'][:16]}  {row['subject']}  ({row['key']})")
    return 0
