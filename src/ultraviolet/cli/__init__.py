"""`uvctl`: the command-line interface. Maps errors to exit codes in one place.

Exit codes: 0 success, 1 a check failed (verify), 2 unusable input or a failed operation.
Each command lives in its own module exposing `register(subparsers)`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from ultraviolet import __version__
from ultraviolet.errors import UltravioletError

# Modules under ultraviolet.cli that each add one command (or command group).
COMMAND_MODULES: tuple[str, ...] = (
    "demo",
    "build",
    "inspect",
    "verify",
    "verity",
    "pcr",
    "policy",
    "keys",
    "vm",
    "tools",
    "attest",
    "agent",
)

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_UNUSABLE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uvctl",
        description="Build, verify and attest image-based Linux container hosts.",
    )
    parser.add_argument("--version", action="version", version=f"uvctl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log external commands")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"ultraviolet.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args)
    except UltravioletError as exc:
        print(f"uvctl: error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
