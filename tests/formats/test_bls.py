"""Boot counting names and systemd-boot's menu order (boot_entry_compare in src/boot/boot.c)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ultraviolet.formats.bls import BlsError, BootEntry, BootEntryName, sort_boot_entries


@pytest.mark.parametrize(
    ("filename", "stem", "left", "done"),
    [
        ("uv_1.2.3+3-0.efi", "uv_1.2.3", 3, 0),
        ("uv_1.2.3+3.efi", "uv_1.2.3", 3, None),
        ("uv_1.2.3.efi", "uv_1.2.3", None, None),
        ("entry+0-3.conf", "entry", 0, 3),
        ("odd+name+2-1.EFI", "odd+name", 2, 1),
        ("plus+x.efi", "plus+x", None, None),
    ],
)
def test_parse_and_format(filename: str, stem: str, left: int | None, done: int | None) -> None:
    name = BootEntryName.parse(filename)
    assert (name.stem, name.tries_left, name.tries_done) == (stem, left, done)
    assert name.format() == filename


def test_tries_progression() -> None:
    name = BootEntryName.parse("uv_2+3-0.efi")
    name = name.after_failed_try()
    assert name.format() == "uv_2+2-1.efi"
    name = name.after_failed_try().after_failed_try()
    assert name.format() == "uv_2+0-3.efi" and name.is_bad
    assert name.after_failed_try() == name  # never below zero
    assert BootEntryName.parse("uv_2+1-2.efi").blessed().format() == "uv_2.efi"
    assert BootEntryName.parse("uv_2+1-2.efi").id == "uv_2.efi"


def test_not_an_entry() -> None:
    with pytest.raises(BlsError, match=r"not a \.efi or \.conf"):
        BootEntryName.parse("README.txt")


def _entry(filename: str, version: str | None = None, sort_key: str | None = "uv") -> BootEntry:
    return BootEntry(BootEntryName.parse(filename), sort_key=sort_key, version=version)


def test_order_newest_first_bad_last() -> None:
    entries = [
        _entry("uv_1.9.efi", "1.9"),
        _entry("uv_1.10+0-3.efi", "1.10"),  # the newest, but out of tries
        _entry("uv_1.10~rc1.efi", "1.10~rc1"),
        _entry("other.efi", None, sort_key=None),
    ]
    order = [e.name.format() for e in sort_boot_entries(entries)]
    assert order == ["uv_1.10~rc1.efi", "uv_1.9.efi", "other.efi", "uv_1.10+0-3.efi"]


def test_order_by_tries_when_otherwise_equal() -> None:
    a = _entry("uv_2+1-2.efi", "2")
    b = _entry("uv_2+3-0.efi", "2")
    c = _entry("uv_2+3-1.efi", "2")
    assert [e.name.format() for e in sort_boot_entries([a, c, b])] == [
        "uv_2+3-0.efi",
        "uv_2+3-1.efi",
        "uv_2+1-2.efi",
    ]


@given(st.text(max_size=40))
def test_random_names(filename: str) -> None:
    try:
        name = BootEntryName.parse(filename)
    except BlsError:
        return
    assert BootEntryName.parse(name.format()) == name
