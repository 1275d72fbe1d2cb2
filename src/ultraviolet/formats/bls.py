"""Boot entry names with boot counting (`NAME+LEFT[-DONE].efi`) and systemd-boot's menu order.

Boot counting (systemd Automatic Boot Assessment): systemd-boot decrements LEFT and increments
DONE before each try; an entry at +0 is "bad" and sorted last; systemd-bless-boot drops the
counter once the boot is declared good. The order follows boot_entry_compare() in
systemd src/boot/boot.c (257).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from ultraviolet.errors import FormatError
from ultraviolet.formats.version import compare_versions

_COUNTER = re.compile(r"\+(\d+)(?:-(\d+))?$")
SUFFIXES = (".efi", ".conf")


class BlsError(FormatError):
    pass


@dataclass(frozen=True)
class BootEntryName:
    stem: str  # the name without counter and suffix: the entry's stable id, minus suffix
    suffix: str  # ".efi" or ".conf"
    tries_left: int | None = None
    tries_done: int | None = None

    @classmethod
    def parse(cls, filename: str) -> BootEntryName:
        suffix = next((s for s in SUFFIXES if filename.lower().endswith(s)), None)
        if suffix is None or "/" in filename:
            raise BlsError("boot entry name", f"{filename!r} is not a .efi or .conf file name")
        base = filename[: -len(suffix)]
        match = _COUNTER.search(base)
        if not match:
            return cls(base, filename[-len(suffix) :])
        left, done = int(match.group(1)), match.group(2)
        return cls(
            base[: match.start()],
            filename[-len(suffix) :],
            left,
            int(done) if done is not None else None,
        )

    def format(self) -> str:
        if self.tries_left is None:
            return self.stem + self.suffix
        done = f"-{self.tries_done}" if self.tries_done is not None else ""
        return f"{self.stem}+{self.tries_left}{done}{self.suffix}"

    @property
    def id(self) -> str:
        """systemd-boot's entry id: the file name without the counter, case folded."""
        return (self.stem + self.suffix).lower()

    @property
    def counting(self) -> bool:
        return self.tries_left is not None

    @property
    def is_bad(self) -> bool:
        return self.tries_left == 0

    def after_failed_try(self) -> BootEntryName:
        """The name systemd-boot renames the entry to before booting it once more."""
        if self.tries_left is None or self.tries_left == 0:
            return self
        return replace(self, tries_left=self.tries_left - 1, tries_done=(self.tries_done or 0) + 1)

    def blessed(self) -> BootEntryName:
        """The name after systemd-bless-boot marked the boot good (counter dropped)."""
        return replace(self, tries_left=None, tries_done=None)


@dataclass(frozen=True)
class BootEntry:
    """What systemd-boot orders by. UKIs take sort_key/version from their .osrel
    (IMAGE_ID or ID, IMAGE_VERSION or VERSION_ID)."""

    name: BootEntryName
    sort_key: str | None = None
    machine_id: str | None = None
    version: str | None = None
    profile: int | None = None


def _cmp(a: int | str, b: int | str) -> int:
    return int(a > b) - int(a < b)  # type: ignore[operator]


def _keys(a: BootEntry, b: BootEntry, left_a: int, left_b: int) -> Iterator[int]:
    """Each comparison step of boot_entry_compare(), computed only when reached."""
    yield _cmp(left_a == 0, left_b == 0)  # entries without tries left go last
    yield _cmp(a.sort_key is None, b.sort_key is None)  # entries with a sort key first
    if a.sort_key is not None and b.sort_key is not None:
        yield _cmp(a.sort_key, b.sort_key)
        yield _cmp(a.machine_id or "", b.machine_id or "")
        yield -compare_versions(a.version or "", b.version or "")  # newest first
    yield -compare_versions(a.name.id, b.name.id)
    if a.profile is not None and b.profile is not None:
        yield _cmp(a.profile, b.profile)


def compare_boot_entries(a: BootEntry, b: BootEntry) -> int:
    """Negative when `a` comes first in systemd-boot's menu."""
    left_a = -1 if a.name.tries_left is None else a.name.tries_left
    left_b = -1 if b.name.tries_left is None else b.name.tries_left
    result = next((r for r in _keys(a, b, left_a, left_b) if r), 0)
    if result or left_a < 0 or left_b < 0:
        return result
    # Both counted and otherwise equal: more tries left first, then fewer tries done.
    return -_cmp(left_a, left_b) or _cmp(a.name.tries_done or 0, b.name.tries_done or 0)


def sort_boot_entries(entries: Sequence[BootEntry]) -> list[BootEntry]:
    return sorted(entries, key=functools.cmp_to_key(compare_boot_entries))
