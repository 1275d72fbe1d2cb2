"""`uvctl policy`: check a node policy, explain its fields."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ultraviolet.policy import load_policy
from ultraviolet.policy.explain import explain, render_markdown, schema_json


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "policy",
        help="check a node policy or explain its fields",
        description="Node policies (node.toml) describe what is on a node. `check` validates one "
        "and reports every problem with file:line; `explain` documents the fields.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate a node policy file")
    check.add_argument("policy", type=Path, help="node.toml")
    check.add_argument("--json", action="store_true", help="print the effective policy as JSON")
    check.set_defaults(func=run_check)
    describe = actions.add_parser("explain", help="document the policy fields")
    describe.add_argument("key", nargs="?", help="a section (boot) or field (boot.tries)")
    form = describe.add_mutually_exclusive_group()
    form.add_argument("--markdown", action="store_true", help="the full reference as Markdown")
    form.add_argument("--json", action="store_true", help="the schema as JSON")
    describe.set_defaults(func=run_explain)


def run_check(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy)
    if args.json:
        print(json.dumps(asdict(policy), indent=2))
    else:
        print(f"{args.policy}: valid ({policy.image.name} {policy.image.version})")
    return 0


def run_explain(args: argparse.Namespace) -> int:
    if args.markdown:
        print(render_markdown())
    elif args.json:
        print(json.dumps(schema_json(), indent=2))
    else:
        print(explain(args.key))
    return 0
