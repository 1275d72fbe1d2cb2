"""newc cpio: round trips, and corrupt archives -> CpioError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ultraviolet.formats.cpio import (
    CpioEntry,
    CpioError,
    read_cpio,
    uncompressed_archives,
    write_cpio,
)

ENTRIES = [
    CpioEntry.directory("usr"),
    CpioEntry.directory("usr/lib"),
    CpioEntry.file("usr/lib/a.conf", b"[Partition]\nType=root\n"),
    CpioEntry.file("usr/lib/run", b"#!/bin/sh\n", 0o755),
    CpioEntry.symlink("usr/lib/link", "a.conf"),
]


def test_round_trip_and_alignment() -> None:
    archive = write_cpio(ENTRIES)
    assert len(archive) % 4 == 0
    assert read_cpio(archive) == ENTRIES
    assert archive == write_cpio(ENTRIES)  # reproducible


def test_absolute_paths_are_refused() -> None:
    with pytest.raises(CpioError, match="relative"):
        write_cpio([CpioEntry.file("/etc/x", b"")])


def test_truncated() -> None:
    with pytest.raises(CpioError, match=r"truncated|past the end") as caught:
        read_cpio(write_cpio(ENTRIES)[:150])
    assert caught.value.offset is not None


@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    with contextlib.suppress(CpioError):
        read_cpio(data)


@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[a-z]{1,8}(/[a-z]{1,8}){0,2}", fullmatch=True), st.binary(max_size=50)
        ),
        max_size=5,
    )
)
def test_round_trip_property(files: list[tuple[str, bytes]]) -> None:
    entries = [CpioEntry.file(path, data) for path, data in files]
    assert read_cpio(write_cpio(entries)) == entries


def test_archives_found_behind_compressed_data() -> None:
    """As in a UKI's .initrd: a compressed member (here noise holding a stray magic), NUL padding,
    then our uncompressed archives; the kernel unpacks them in turn, the scan finds ours."""
    noise = b"\x28\xb5\x2f\xfd" + b"070701" + bytes(range(256)) * 3 + b"070701zz"
    second = [CpioEntry.file("usr/lib/ultraviolet/ipe/policy.p7s", b"signed")]
    initrd = noise + bytes(3) + write_cpio(ENTRIES) + bytes(16) + write_cpio(second)
    archives = uncompressed_archives(initrd)
    assert [list(a.entries) for a in archives] == [ENTRIES, second]
    assert archives[0].offset == len(noise) + 3
    assert archives[1].file("usr/lib/ultraviolet/ipe/policy.p7s") == b"signed"
    assert archives[1].file("usr/lib/missing") is None
    assert archives[0].file("usr/lib") is None  # a directory is not a file


def test_a_truncated_last_archive_is_not_reported() -> None:
    initrd = write_cpio(ENTRIES) + write_cpio(ENTRIES)[:-20]
    assert [a.offset for a in uncompressed_archives(initrd)] == [0]


@given(st.binary(max_size=400), st.binary(max_size=40))
def test_scan_never_raises(prefix: bytes, suffix: bytes) -> None:
    found = uncompressed_archives(prefix + write_cpio(ENTRIES) + suffix)
    assert any(list(a.entries) == ENTRIES for a in found)
