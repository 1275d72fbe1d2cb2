"""newc cpio: round trips, and corrupt archives -> CpioError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ultraviolet.formats.cpio import CpioEntry, CpioError, read_cpio, write_cpio

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
