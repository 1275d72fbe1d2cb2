"""`uvctl demo`: build the embedded default image, verify it and show its trust report."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ultraviolet.build.keys import load_key_pair
from ultraviolet.build.mkosi import build_cached, embedded_tree
from ultraviolet.verify.chain import verify_image
from ultraviolet.verify.inspect import inspect_image, render_text


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="build the embedded example image, verify it, show its trust report",
        description=(
            "Build the embedded minimal Debian trixie image (signed UKI, systemd-boot, erofs /usr "
            "with dm-verity and a signed root hash) with mkosi in the tools chroot, cached in the "
            "cache directory; then inspect it and verify its chain of trust with the generated "
            "certificate. Needs root (mount namespaces) and the Debian archive."
        ),
    )
    parser.add_argument("--rebuild", action="store_true", help="ignore a cached build")
    parser.add_argument("--quiet", action="store_true", help="do not stream mkosi's output")
    parser.set_defaults(func=run)


def _progress(line: str) -> None:
    print(f"  mkosi| {line}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    print("== building the embedded default image (cached after the first build)", file=sys.stderr)
    outputs = build_cached(
        embedded_tree(), rebuild=args.rebuild, progress=None if args.quiet else _progress
    )
    print(f"== built {outputs.image} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    certificate = load_key_pair(outputs.key, outputs.certificate).certificate
    print(render_text(inspect_image(outputs.image, [certificate])))
    print()
    report = verify_image(outputs.image, [certificate])
    print(report.render_text())
    return 0 if report.ok else 1
