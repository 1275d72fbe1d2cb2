"""systemd-style INI files (repart.d, sysupdate.d, mkosi.conf): parse and render.

Parsing follows systemd's config_parse(): `#`/`;` comment lines, `[Section]` headers,
`Key=Value` with whitespace around both trimmed, a trailing backslash joining the next line
with a space. Assignments repeat and stay in order; drop-ins are read after the main file, and
for list-like settings an empty assignment resets what came before (`get_all`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ultraviolet.errors import FormatError

_KEY = re.compile(r"[A-Za-z0-9_.-]+")
_SECTION = re.compile(r"[^\[\]\n]+")


class UnitFileError(FormatError):
    pass


@dataclass(frozen=True)
class Section:
    name: str
    entries: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class UnitFile:
    sections: tuple[Section, ...]

    def get(self, section: str, key: str) -> str | None:
        """The effective (last) value of `key` in `section`, or None."""
        values = [v for s in self.sections if s.name == section for k, v in s.entries if k == key]
        return values[-1] if values else None

    def get_all(self, section: str, key: str) -> tuple[str, ...]:
        """All values in order; an empty assignment resets the list, as systemd does."""
        values: list[str] = []
        for entry_section in self.sections:
            if entry_section.name != section:
                continue
            for name, value in entry_section.entries:
                if name == key:
                    values = [] if value == "" else [*values, value]
        return tuple(values)

    def section_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.name for s in self.sections))


def unit(*sections: tuple[str, Sequence[tuple[str, str]]]) -> UnitFile:
    """UnitFile(("Partition", [("Type", "usr"), ...]), ...) with the names checked."""
    built = UnitFile(tuple(Section(name, tuple(entries)) for name, entries in sections))
    render_unit(built)  # validates what can be represented
    return built


def _logical_lines(text: str) -> Iterable[tuple[int, int, str]]:
    """(line number, byte offset, text) with continuations joined."""
    pending: list[str] = []
    start_line = start_offset = 0
    offset = 0
    for number, raw in enumerate(text.splitlines(keepends=True), start=1):
        line = raw.rstrip("\r\n")
        if not pending:
            start_line, start_offset = number, offset
            if line.lstrip().startswith(("#", ";")):
                offset += len(raw.encode())
                continue
        offset += len(raw.encode())
        if line.endswith("\\"):
            pending.append(line[:-1] + " ")
            continue
        pending.append(line)
        yield start_line, start_offset, "".join(pending)
        pending = []
    if pending:
        yield start_line, start_offset, "".join(pending)


def parse_unit(text: str, *, source: str = "<string>") -> UnitFile:
    sections: list[Section] = []
    current: tuple[str, list[tuple[str, str]]] | None = None
    for number, offset, raw in _logical_lines(text):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]") or not _SECTION.fullmatch(line[1:-1]):
                raise UnitFileError(
                    source, f"line {number}: invalid section header {line!r}", offset
                )
            if current:
                sections.append(Section(current[0], tuple(current[1])))
            current = (line[1:-1], [])
            continue
        if current is None:
            raise UnitFileError(source, f"line {number}: assignment outside of a section", offset)
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not _KEY.fullmatch(key):
            raise UnitFileError(source, f"line {number}: expected Key=Value, got {line!r}", offset)
        current[1].append((key, value.strip()))
    if current:
        sections.append(Section(current[0], tuple(current[1])))
    return UnitFile(tuple(sections))


def _check_value(section: str, key: str, value: str) -> None:
    if not _KEY.fullmatch(key):
        raise UnitFileError("unit file", f"[{section}] invalid key {key!r}")
    if "\n" in value or "\r" in value:
        raise UnitFileError("unit file", f"[{section}] {key}: value contains a line break")
    if value != value.strip() or value.endswith("\\"):
        raise UnitFileError(
            "unit file",
            f"[{section}] {key}: surrounding whitespace or a trailing backslash "
            "would not survive parsing",
        )


def render_unit(unit_file: UnitFile) -> str:
    blocks = []
    for section in unit_file.sections:
        if not _SECTION.fullmatch(section.name):
            raise UnitFileError("unit file", f"invalid section name {section.name!r}")
        lines = [f"[{section.name}]"]
        for key, value in section.entries:
            _check_value(section.name, key, value)
            lines.append(f"{key}={value}")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def merge_units(base: UnitFile, *dropins: UnitFile) -> UnitFile:
    """The file as systemd sees it with drop-ins: their sections read after the base's."""
    return UnitFile(base.sections + tuple(s for d in dropins for s in d.sections))
