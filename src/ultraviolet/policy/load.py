"""Loading node.toml: TOML -> validated, frozen NodePolicy, or every problem with file:line.

tomllib gives no positions, so a light line scan maps each `[section]` and `key =` to its line;
that is enough for our flat, two-level policy format.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ultraviolet.errors import PolicyError
from ultraviolet.formats.version import is_valid_version
from ultraviolet.policy.model import SECTION_TYPES, NodePolicy
from ultraviolet.policy.schema import FIELDS, SECTIONS, Field, Kind, fields_of

_HEADER = re.compile(r"\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"\s*([A-Za-z0-9_-]+)\s*=")
_SIZE = re.compile(r"(\d+)\s*([KMGT]?)(i?B)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class PolicyIssue:
    source: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.key}: {self.message}"


class PolicyValidationError(PolicyError):
    """Every problem found in one policy, each with file, line, field and what was expected."""

    def __init__(self, issues: list[PolicyIssue]) -> None:
        self.issues = tuple(issues)
        count = f"{len(issues)} problem{'s' if len(issues) != 1 else ''}"
        super().__init__(f"invalid node policy ({count}):\n" + "\n".join(map(str, issues)))


def _locations(text: str) -> dict[str, int]:
    """'section' and 'section.key' -> 1-based line number."""
    where: dict[str, int] = {}
    section = ""
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            section = header.group(1)
            where.setdefault(section, number)
            continue
        key = _KEY.match(line)
        if key:
            where.setdefault(f"{section}.{key.group(1)}" if section else key.group(1), number)
    return where


def parse_size(value: str | int) -> int | None:
    """'512M' / '2G' / 1048576 -> bytes; None when it is not a size."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    match = _SIZE.fullmatch(value.strip())
    if not match:
        return None
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]


def _type_problem(field: Field, value: Any) -> str | None:
    """What was expected, if `value` has the wrong type for `field`."""
    if field.kind is Kind.BOOLEAN:
        ok = isinstance(value, bool)
    elif field.kind is Kind.INTEGER:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif field.kind is Kind.STRING_LIST:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif field.kind is Kind.INTEGER_LIST:
        ok = isinstance(value, list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        )
    elif field.kind is Kind.SIZE:
        ok = isinstance(value, (str, int)) and parse_size(value) is not None
    else:
        ok = isinstance(value, str)
    if ok:
        return None
    return f"expected {_describe(field)}, got {value!r}"


def _describe(field: Field) -> str:
    if field.kind is Kind.CHOICE:
        return "one of " + ", ".join(repr(c) for c in field.choices)
    if field.kind is Kind.SIZE:
        return 'a size such as "512M", "2G" or a number of bytes'
    if field.kind is Kind.VERSION:
        return 'a version string (UAPI version format, e.g. "1.2.3")'
    article = "an" if field.kind.value[0] in "aeiou" else "a"
    return f"{article} {field.kind.value}"


def field_problem(field: Field, value: Any) -> str | None:
    problem = _type_problem(field, value)
    if problem:
        return problem
    if field.kind is Kind.CHOICE and value not in field.choices:
        return f"expected {_describe(field)}, got {value!r}"
    if field.kind is Kind.VERSION and not is_valid_version(value):
        return f"expected {_describe(field)}, got {value!r}"
    if field.check:
        expected = field.check(value)
        if expected:
            return f"expected {expected}"
    return None


def _did_you_mean(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(candidates)}"


def _unknown_keys(data: dict[str, Any], source: str, where: dict[str, int]) -> list[PolicyIssue]:
    issues = []
    for section, table in data.items():
        if section not in SECTIONS:
            hint = _did_you_mean(section, list(SECTIONS))
            issues.append(
                PolicyIssue(source, where.get(section), f"[{section}]", "unknown section" + hint)
            )
            continue
        if not isinstance(table, dict):
            issues.append(
                PolicyIssue(
                    source,
                    where.get(section),
                    section,
                    "expected a table: write it as [" + section + "]",
                )
            )
            continue
        names = [f.name for f in fields_of(section)]
        for key in table:
            if key not in names:
                issues.append(
                    PolicyIssue(
                        source,
                        where.get(f"{section}.{key}"),
                        f"{section}.{key}",
                        "unknown key" + _did_you_mean(key, names),
                    )
                )
    return issues


def _convert(field: Field, value: Any) -> Any:
    if field.kind is Kind.SIZE:
        return parse_size(value)
    if isinstance(value, list):
        return tuple(value)
    return value


def _sections(
    data: dict[str, Any], source: str, where: dict[str, int]
) -> tuple[dict[str, dict[str, Any]], list[PolicyIssue]]:
    values: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    issues: list[PolicyIssue] = []
    for field in FIELDS:
        table = data.get(field.section)
        present = isinstance(table, dict) and field.name in table
        if not present:
            if field.required:
                issues.append(
                    PolicyIssue(
                        source,
                        where.get(field.section),
                        field.key,
                        f"required; add e.g. {field.name} = {field.example}",
                    )
                )
            values[field.section][field.name] = (
                None if field.required else _convert(field, field.default)
            )
            continue
        assert isinstance(table, dict)
        value = table[field.name]
        problem = field_problem(field, value)
        if problem:
            issues.append(PolicyIssue(source, where.get(field.key), field.key, problem))
        values[field.section][field.name] = _convert(field, value)
    return values, issues


def parse_policy(text: str, *, source: str = "<policy>") -> NodePolicy:
    """Validate a node policy; raise PolicyValidationError listing every problem at once."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyValidationError([PolicyIssue(source, None, "TOML", str(exc))]) from exc
    where = _locations(text)
    issues = _unknown_keys(data, source, where)
    values, value_issues = _sections(data, source, where)
    issues.extend(value_issues)
    if issues:
        raise PolicyValidationError(issues)
    sections = {name: SECTION_TYPES[name](**values[name]) for name in SECTIONS}
    digest = hashlib.sha256(text.encode()).hexdigest()
    return NodePolicy(source=source, digest=digest, **sections)


def load_policy(path: Path) -> NodePolicy:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read node policy {path}: {exc}") from exc
    return parse_policy(text, source=str(path))
