"""Our cpio archives, unpacked by GNU cpio and listed by it exactly as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from ultraviolet.formats.cpio import CpioEntry, write_cpio
from ultraviolet.tools import ToolsChroot

pytestmark = pytest.mark.oracle


def test_gnu_cpio_extracts_ours(tools_chroot: ToolsChroot, tmp_path: Path) -> None:
    entries = [
        CpioEntry.directory("usr"),
        CpioEntry.directory("usr/lib"),
        CpioEntry.file("usr/lib/x.conf", b"hello\n"),
        CpioEntry.file("usr/lib/tool", b"#!/bin/sh\necho hi\n", 0o755),
        CpioEntry.symlink("usr/lib/y.conf", "x.conf"),
    ]
    (tmp_path / "a.cpio").write_bytes(write_cpio(entries))
    out = tmp_path / "out"
    out.mkdir()
    listing = tools_chroot.run(
        ["sh", "-c", "cpio -t < ../a.cpio && cpio -idm --quiet < ../a.cpio"],
        binds=[tmp_path],
        cwd=out,
    ).text.split()
    assert listing == [e.path for e in entries]
    assert (out / "usr/lib/x.conf").read_bytes() == b"hello\n"
    assert (out / "usr/lib/tool").stat().st_mode & 0o777 == 0o755
    assert (out / "usr/lib/y.conf").readlink() == Path("x.conf")
