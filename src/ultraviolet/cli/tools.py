"""`uvctl tools`: create the tools chroot, or run a program inside it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ultraviolet.tools import ToolsChroot


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tools",
        help="manage the Debian trixie tools chroot (mkosi, systemd, cryptsetup, qemu, ...)",
        description="The real tools Ultraviolet builds with and tests against live in a Debian "
        "trixie chroot in the cache directory, created on demand with mmdebstrap (needs root).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    ensure = actions.add_parser("ensure", help="create the chroot unless it is up to date")
    ensure.set_defaults(func=run_ensure)
    run = actions.add_parser("run", help="run a command inside the chroot")
    run.add_argument("--bind", action="append", default=[], help="host path to bind (same path)")
    run.add_argument("argv", nargs=argparse.REMAINDER, help="command and arguments")
    run.set_defaults(func=run_command)


def run_ensure(args: argparse.Namespace) -> int:
    chroot = ToolsChroot.default()
    chroot.ensure(stream=lambda line: print(line, file=sys.stderr))
    print(chroot.root)
    return 0


def run_command(args: argparse.Namespace) -> int:
    chroot = ToolsChroot.default().ensure()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    result = chroot.run(argv, binds=args.bind, check=False)
    sys.stdout.buffer.write(result.stdout)
    sys.stderr.buffer.write(result.stderr)
    return result.returncode
