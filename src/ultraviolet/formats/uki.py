"""Unified Kernel Images (UAPI UKI spec): the section model, profiles, and building from parts.

Sections before the first `.profile` form the base; each `.profile` starts a profile whose own
sections override the base's (systemd-stub 257 multi-profile UKIs).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ultraviolet.errors import FormatError
from ultraviolet.formats._reader import Bytes
from ultraviolet.formats.pe import PeError, add_sections, parse_pe, section_data

# The order systemd-stub measures sections in (and ukify writes them).
SECTION_ORDER = (
    ".linux",
    ".osrel",
    ".cmdline",
    ".initrd",
    ".ucode",
    ".splash",
    ".dtb",
    ".uname",
    ".sbat",
    ".pcrsig",
    ".pcrpkey",
    ".profile",
    ".dtbauto",
    ".hwids",
    ".efifw",
)
UKI_SECTIONS = frozenset(SECTION_ORDER)
TEXT_SECTIONS = frozenset(
    {".osrel", ".cmdline", ".uname", ".sbat", ".pcrsig", ".pcrpkey", ".profile"}
)
# Sections that may repeat: systemd-stub takes the first one that matches the device (by .hwids
# or the firmware's devicetree), so they are candidates rather than one section.
DEVICE_MATCHED = frozenset({".dtbauto", ".efifw"})


class UkiError(FormatError):
    pass


@dataclass(frozen=True)
class UkiSection:
    name: str
    data: bytes  # VirtualSize bytes
    offset: int  # PointerToRawData
    virtual_address: int

    @property
    def size(self) -> int:
        return len(self.data)

    def text(self) -> str:
        return self.data.rstrip(b"\0").decode("utf-8", errors="replace")


@dataclass(frozen=True)
class UkiProfile:
    """Sections effective for one profile: the base, overridden by the profile's own."""

    number: int
    sections: Mapping[str, UkiSection]  # without the DEVICE_MATCHED ones
    # The profile's own candidates first, then the base's: the stub's first match wins.
    device_matched: tuple[UkiSection, ...] = ()

    @property
    def id(self) -> str | None:
        profile = self.sections.get(".profile")
        if profile is None:
            return None
        return parse_os_release(profile.text()).get("ID")

    @property
    def cmdline(self) -> str | None:
        section = self.sections.get(".cmdline")
        return section.text().strip() if section else None


def parse_os_release(text: str) -> dict[str, str]:
    """os-release(5): KEY=value lines, values optionally quoted."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        values[key.strip()] = value
    return values


@dataclass(frozen=True)
class Uki:
    sections: tuple[UkiSection, ...]  # all UKI sections in file order
    base: Mapping[str, UkiSection]  # sections before the first .profile, without DEVICE_MATCHED
    profiles: tuple[UkiProfile, ...]  # empty for a single-profile UKI
    base_device_matched: tuple[UkiSection, ...] = ()  # .dtbauto/.efifw candidates of the base

    def section(self, name: str) -> UkiSection | None:
        return self.base.get(name)

    @property
    def cmdline(self) -> str | None:
        section = self.base.get(".cmdline")
        return section.text().strip() if section else None

    @property
    def os_release(self) -> dict[str, str]:
        section = self.base.get(".osrel")
        return parse_os_release(section.text()) if section else {}

    @property
    def uname(self) -> str | None:
        section = self.base.get(".uname")
        return section.text().strip() if section else None

    @property
    def usrhash(self) -> str | None:
        return cmdline_value(self.cmdline or "", "usrhash")

    @property
    def pcrsig(self) -> Any:
        section = self.base.get(".pcrsig")
        if section is None:
            return None
        try:
            return json.loads(section.text())
        except json.JSONDecodeError as exc:
            raise UkiError(".pcrsig", f"not JSON: {exc.msg}", section.offset + exc.pos) from exc


def cmdline_value(cmdline: str, key: str) -> str | None:
    """The value of the last `key=value` word (the kernel and systemd take the last one)."""
    found = None
    for word in cmdline.split():
        name, sep, value = word.partition("=")
        if sep and name == key:
            found = value
    return found


def parse_uki(image: Bytes) -> Uki:
    try:
        pe = parse_pe(image)
        sections = tuple(
            UkiSection(s.name, section_data(image, s), s.pointer_to_raw_data, s.virtual_address)
            for s in pe.sections
            if s.name in UKI_SECTIONS
        )
    except PeError as exc:
        raise UkiError("UKI " + exc.structure, exc.detail, exc.offset) from exc
    if not any(s.name == ".linux" for s in sections):
        raise UkiError("UKI", "no .linux section: not a unified kernel image", pe.coff_offset)
    groups = _split_profiles(sections)
    base, base_matched = groups[0]
    profiles = tuple(
        UkiProfile(number, {**base, **own}, own_matched + base_matched)
        for number, (own, own_matched) in enumerate(groups[1:])
    )
    return Uki(sections, base, profiles, base_matched)


_Group = tuple[dict[str, UkiSection], tuple[UkiSection, ...]]


def _split_profiles(sections: Sequence[UkiSection]) -> list[_Group]:
    """The base, then one group per .profile; each as (unique sections, device-matched ones)."""
    unique: list[dict[str, UkiSection]] = [{}]
    matched: list[list[UkiSection]] = [[]]
    for section in sections:
        if section.name == ".profile":
            unique.append({})
            matched.append([])
        if section.name in DEVICE_MATCHED:
            matched[-1].append(section)
            continue
        # systemd-stub would silently take the first; two different answers is not a UKI we pass.
        if section.name in unique[-1]:
            raise UkiError("UKI", f"duplicate {section.name} section", section.offset)
        unique[-1][section.name] = section
    return [(own, tuple(candidates)) for own, candidates in zip(unique, matched, strict=True)]


def build_uki(stub: Bytes, sections: Sequence[tuple[str, bytes]]) -> bytes:
    """A UKI: `sections` (name, contents) appended to a systemd-stub the way ukify does it."""
    for name, _ in sections:
        if name not in UKI_SECTIONS:
            raise UkiError("UKI", f"{name!r} is not a UKI section")
    try:
        return add_sections(stub, sections)
    except PeError as exc:
        raise UkiError("UKI " + exc.structure, exc.detail, exc.offset) from exc
