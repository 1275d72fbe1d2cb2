"""`uvctl verity`: dm-verity hash trees, byte-identical to veritysetup."""

from __future__ import annotations

import argparse
import json
import uuid
from pathlib import Path
from typing import Any

from ultraviolet.diskimage import HASH_WORKERS, map_file
from ultraviolet.errors import VerificationError
from ultraviolet.formats.verity import (
    VerityParams,
    VeritySuperblock,
    format_hash_device,
    verify_hash_device,
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "verity",
        help="create or check dm-verity hash trees (veritysetup-compatible)",
        description="dm-verity hash trees as `veritysetup format` writes them: superblock "
        "version 1, sha256, 4096-byte blocks; or the --no-superblock layout.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("format", help="write the hash tree of DATA to HASHFILE")
    create.add_argument("data", type=Path, help="data file (a whole number of 4096-byte blocks)")
    create.add_argument("hashfile", type=Path, help="hash file to write")
    create.add_argument("--salt", default="", help="salt as hex (default: none)")
    create.add_argument("--uuid", type=uuid.UUID, help="superblock UUID (default: random)")
    create.add_argument("--no-superblock", action="store_true", help="no superblock")
    create.add_argument("--json", action="store_true", help="print JSON")
    create.set_defaults(func=run_format)
    check = actions.add_parser("verify", help="check DATA against HASHFILE and ROOTHASH")
    check.add_argument("data", type=Path)
    check.add_argument("hashfile", type=Path)
    check.add_argument("roothash", help="root hash as hex")
    check.add_argument("--no-superblock", action="store_true", help="HASHFILE has no superblock")
    check.add_argument("--salt", default="", help="salt as hex (only with --no-superblock)")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(func=run_verify)


def _hex(value: str, what: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise VerificationError(f"{what} must be hex, got {value!r}") from exc


def run_format(args: argparse.Namespace) -> int:
    salt = _hex(args.salt, "--salt")
    volume_uuid = args.uuid or uuid.uuid4()
    with map_file(args.data) as data:
        hash_device, root_hash = format_hash_device(
            data,
            salt=salt,
            uuid=volume_uuid,
            superblock=not args.no_superblock,
            workers=HASH_WORKERS,
        )
        data_blocks = len(data) // 4096
    args.hashfile.write_bytes(hash_device)
    info = {
        "root_hash": root_hash.hex(),
        "salt": salt.hex(),
        "uuid": None if args.no_superblock else str(volume_uuid),
        "data_blocks": data_blocks,
        "hash_file_bytes": len(hash_device),
    }
    print(json.dumps(info, indent=2) if args.json else f"Root hash: {root_hash.hex()}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    root_hash = _hex(args.roothash, "ROOTHASH")
    with map_file(args.data) as data, map_file(args.hashfile) as hash_device:
        if args.no_superblock:
            params = VerityParams(salt=_hex(args.salt, "--salt"))
            check = verify_hash_device(
                data,
                hash_device,
                root_hash,
                superblock=False,
                params=params,
                workers=HASH_WORKERS,
            )
        else:
            VeritySuperblock.parse(hash_device)  # a broken superblock is unusable input
            check = verify_hash_device(data, hash_device, root_hash, workers=HASH_WORKERS)
    if args.json:
        print(
            json.dumps(
                {
                    "ok": check.ok,
                    "message": check.message,
                    "first_bad_block": check.first_bad_block,
                    "bad_hash_offset": check.bad_hash_offset,
                },
                indent=2,
            )
        )
    else:
        print(check.message)
    return 0 if check.ok else 1
