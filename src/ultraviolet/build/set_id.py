"""Which [image] packages entry brings which set-id file, and the policy error saying so.

The base system (Essential packages, base-files and the packages Ultraviolet itself adds to
mkosi.conf) is installed whatever the policy says; its set-id bits are stripped by the
finalize script. An entry of [image] packages is charged with its own set-id files and with
those of every package it pulls in that the base does not (dependencies followed through
Depends, Pre-Depends and Provides, as apt resolved them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass

from ultraviolet.errors import BuildError, PolicyError
from ultraviolet.policy.load import PolicyIssue, PolicyValidationError
from ultraviolet.policy.model import NodePolicy

PACKAGES_KEY = "image.packages"
_SECTION = re.compile(r"\s*\[\s*([A-Za-z0-9_.-]+)\s*\]")
_PACKAGES = re.compile(r"\s*packages\s*=")
_QUOTED = re.compile(r"\"([^\"]*)\"|'([^']*)'")


@dataclass(frozen=True, order=True)
class SetIdFile:
    path: str  # where it is installed, as suid_allow names it: /usr/bin/passwd
    bits: int  # 0o4000 set-uid, 0o2000 set-gid

    @property
    def kind(self) -> str:
        names = [n for bit, n in ((0o4000, "set-uid"), (0o2000, "set-gid")) if self.bits & bit]
        return "/".join(names)


@dataclass(frozen=True)
class DebSummary:
    """What the check needs from one .deb."""

    name: str
    version: str
    essential: bool
    depends: tuple[str, ...]  # Depends and Pre-Depends names, every alternative
    provides: tuple[str, ...]
    set_id: tuple[SetIdFile, ...] | None  # None: its files were not read (not charged)


@dataclass(frozen=True)
class SetIdOffender:
    entry: str  # the [image] packages entry charged with it
    package: str  # the package that installs the file
    file: SetIdFile

    def message(self) -> str:
        path = self.file.path
        if self.package == self.entry:
            who, what = f'package "{self.entry}"', "it"
        else:
            who, what = f'package "{self.package}" (via "{self.entry}")', f'"{self.entry}"'
        return (
            f"{who} installs {self.file.kind} {path}: remove {what} from [image] packages "
            f'or add "{path}" to [integrity] suid_allow'
        )


class _Graph:
    def __init__(self, packages: Sequence[DebSummary]) -> None:
        self.by_name = {p.name: p for p in packages}
        self.providers: dict[str, list[str]] = {}
        for package in packages:
            for name in (package.name, *package.provides):
                self.providers.setdefault(name, []).append(package.name)

    def resolve(self, names: Iterable[str]) -> list[str]:
        return [p for name in names for p in self.providers.get(name, [])]

    def reach(self, roots: Iterable[str], stop: Set[str] = frozenset()) -> list[str]:
        """Packages reachable from `roots` (breadth first, roots included), not entering
        `stop`."""
        seen = dict.fromkeys(self.resolve(roots))
        queue = list(seen)
        while queue:
            package = self.by_name[queue.pop(0)]
            for dependency in self.resolve(package.depends):
                if dependency not in seen and dependency not in stop:
                    seen[dependency] = None
                    queue.append(dependency)
        return list(seen)


def charged_packages(
    entries: Sequence[str], requested: Sequence[str], packages: Sequence[DebSummary]
) -> list[tuple[str, str]]:
    """(entry, package) for every package an entry of [image] packages brings beyond the base
    (`requested` is everything mkosi.conf asks for): only these need their files read."""
    graph = _Graph(packages)
    own = set(entries)
    base_roots = [p.name for p in packages if p.essential]
    base_roots += ["base-files", *(name for name in requested if name not in own)]
    base = set(graph.reach(base_roots))
    charged = []
    for entry in entries:
        named = set(graph.resolve([entry]))
        charged += [(entry, name) for name in graph.reach([entry], stop=base - named)]
    return charged


def set_id_offenders(
    entries: Sequence[str],
    allowed: Iterable[str],
    requested: Sequence[str],
    packages: Sequence[DebSummary],
) -> list[SetIdOffender]:
    """The set-id files that `entries` (the policy's [image] packages) bring beyond the base
    (`requested` is everything mkosi.conf asks for) and `allowed` does not list."""
    by_name = {p.name: p for p in packages}
    allow = set(allowed)
    offenders: dict[tuple[str, str], SetIdOffender] = {}
    for entry, name in charged_packages(entries, requested, packages):
        files = by_name[name].set_id
        if files is None:
            raise BuildError(f"package {name} (via {entry!r}) was resolved but not read")
        for file in files:
            if file.path not in allow:
                offenders.setdefault((name, file.path), SetIdOffender(entry, name, file))
    return list(offenders.values())


def package_entry_lines(text: str) -> tuple[int | None, dict[str, int]]:
    """The line of `packages =` in [image] and the line of each of its quoted entries."""
    lines = text.splitlines()
    section = ""
    for number, line in enumerate(lines, start=1):
        header = _SECTION.match(line)
        if header:
            section = header.group(1)
        elif section == "image" and _PACKAGES.match(line):
            return number, _array_entries(lines, number)
    return None, {}


def _array_entries(lines: list[str], first: int) -> dict[str, int]:
    where: dict[str, int] = {}
    for number in range(first, len(lines) + 1):
        line = lines[number - 1]
        if number == first:
            line = line.partition("=")[2]
        code = line.split("#", 1)[0]  # package names hold no '#'
        for match in _QUOTED.finditer(code):
            where.setdefault(match.group(1) or match.group(2) or "", number)
        if "]" in _QUOTED.sub("", code):
            break
    return where


def _issue(policy: NodePolicy, text: str | None, entry: str, message: str) -> PolicyIssue:
    key_line, entry_lines = package_entry_lines(text) if text is not None else (None, {})
    return PolicyIssue(policy.source, entry_lines.get(entry, key_line), PACKAGES_KEY, message)


def set_id_error(
    policy: NodePolicy,
    text: str | None,
    requested: Sequence[str],
    packages: Sequence[DebSummary],
) -> PolicyValidationError | None:
    """The error listing every offender with the policy line of its entry (None if none);
    `text` is the policy's text (None when unknown: then no lines are given)."""
    offenders = set_id_offenders(
        policy.image.packages, policy.integrity.suid_allow, requested, packages
    )
    if not offenders:
        return None
    return PolicyValidationError([_issue(policy, text, o.entry, o.message()) for o in offenders])


def unknown_packages_error(
    policy: NodePolicy, text: str | None, names: Sequence[str]
) -> BuildError | PolicyError:
    """apt knows no package of these names: the policy's entries are named with their line;
    a name Ultraviolet itself asked for is a build error."""
    ours = [name for name in names if name not in policy.image.packages]
    if ours:
        return BuildError(
            f"the Debian archive has no package {', '.join(ours)} (Ultraviolet's own)"
        )
    issues = [
        _issue(policy, text, name, f'package "{name}" is not in the Debian archive')
        for name in names
    ]
    return PolicyValidationError(issues)
