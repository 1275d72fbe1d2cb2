"""`uvctl demo`: build the embedded example node policy, verify it, show its trust report."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ultraviolet.build.node import build_cached_node, example_policy_path
from ultraviolet.policy import load_policy
from ultraviolet.verify.chain import verify_image
from ultraviolet.verify.inspect import inspect_image, render_text
from ultraviolet.verify.measured import Expectations
from ultraviolet.verify.trust import load_reference


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="build the embedded example node image, verify it, show its trust report",
        description=(
            "Build the embedded example node policy (container-host: Debian trixie, containerd, "
            "signed UKI, systemd-boot, erofs /usr with dm-verity and a signed root hash, IPE "
            "policy, A/B update and first-boot definitions) with mkosi in the tools chroot, "
            "cached in the cache directory; then inspect it and verify its chain of trust "
            "against the generated db certificate. Needs root and the Debian archive."
        ),
    )
    parser.add_argument("--rebuild", action="store_true", help="ignore a cached build")
    parser.add_argument("--quiet", action="store_true", help="do not stream mkosi's output")
    parser.set_defaults(func=run)


def _progress(line: str) -> None:
    print(f"  build| {line}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    path = example_policy_path()
    print(f"== building {path.name} (cached after the first build)", file=sys.stderr)
    policy = load_policy(path)
    result, keys = build_cached_node(
        policy, rebuild=args.rebuild, progress=None if args.quiet else _progress
    )
    print(f"== built {result.image} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    db = keys.signer("db").certificate
    print(render_text(inspect_image(result.image, [db])))
    print(f"\nReference values: {result.reference}\n")
    report = verify_image(
        result.image, [db], Expectations(policy, load_reference(result.reference))
    )
    print(report.render_text())
    return 0 if report.ok else 1
