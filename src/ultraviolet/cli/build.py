"""`uvctl build node.toml -o OUT`: a signed node image and its release from a node policy."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ultraviolet.build.keyset import MANIFEST, init_keys, load_keys
from ultraviolet.build.node import build_node
from ultraviolet.policy import load_policy
from ultraviolet.verify.chain import verify_image
from ultraviolet.verify.measured import Expectations
from ultraviolet.verify.trust import load_reference


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "build",
        help="build a signed node image and release from a node policy",
        description="Validate the node policy, render the mkosi tree (OUT/tree), run mkosi in "
        "the tools chroot, write the release (OUT/release: image, UKI, split partitions, signed "
        "SHA256SUMS, reference.json) and verify the result offline. Needs root.",
    )
    parser.add_argument("policy", type=Path, help="node.toml")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--keys",
        type=Path,
        help="key set directory (default: OUT/keys, created with `uvctl keys init` if missing)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not stream mkosi's output")
    parser.set_defaults(func=run)


def _say(line: str) -> None:
    print(f"  build| {line}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy)  # every policy error before anything runs
    key_directory = args.keys or args.output / "keys"
    if args.keys is None and not (key_directory / MANIFEST).exists():
        init_keys(key_directory)
        _say(f"created a new key set in {key_directory}")
    keys = load_keys(key_directory)
    result = build_node(policy, args.output, keys, progress=None if args.quiet else _say)
    expected = Expectations(policy, load_reference(result.reference))
    report = verify_image(result.image, [keys.signer("db").certificate], expected)
    print(report.render_text())
    print(f"release: {result.release}\nreference values: {result.reference}")
    return 0 if report.ok else 1
