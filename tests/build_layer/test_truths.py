"""Universal truths: set-id bits, file capabilities and device nodes in /usr."""

from __future__ import annotations

import gzip
import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from ultraviolet.build.truths import (
    check_usr,
    check_usr_partition,
    finalize_script,
    scan_erofs,
    scan_usr,
)
from ultraviolet.errors import BuildError
from ultraviolet.formats.erofs import ErofsImage

# mkfs.erofs image with set-id files, capabilities and device nodes (tests/fixtures/README.md).
EROFS = gzip.decompress((Path(__file__).parents[1] / "fixtures" / "erofs.img.gz").read_bytes())

# A valid VFS_CAP_REVISION_2 blob: cap_net_bind_service (10) permitted and effective.
CAPS = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)


def _tree(root: Path) -> Path:
    usr = root / "usr"
    (usr / "bin").mkdir(parents=True)
    for name in ("su", "mount", "plain", "ping"):
        (usr / "bin" / name).write_bytes(b"\x7fELF")
    os.chmod(usr / "bin" / "su", 0o4755)
    os.chmod(usr / "bin" / "mount", 0o2755)
    try:
        os.setxattr(usr / "bin" / "ping", "security.capability", CAPS)
    except OSError:
        pytest.skip("this file system does not take security.capability xattrs")
    return usr


def test_scan_lists_offenders(tmp_path: Path) -> None:
    usr = _tree(tmp_path)
    offenders = scan_usr(usr, "/usr", allowed=["/usr/bin/mount"])
    assert [(o.path, o.problem) for o in offenders] == [
        ("/usr/bin/ping", "file capabilities"),
        ("/usr/bin/su", "set-uid/set-gid bit"),
    ]
    with pytest.raises(BuildError, match="/usr/bin/su: set-uid"):
        check_usr(usr, "/usr", [])


def test_device_nodes_are_never_allowed(tmp_path: Path) -> None:
    usr = tmp_path / "usr"
    usr.mkdir()
    try:
        os.mknod(usr / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod needs root")
    offenders = scan_usr(usr, "/usr", ["/usr/null"])
    assert [(o.path, o.problem) for o in offenders] == [("/usr/null", "device node outside /dev")]


def test_finalize_script_strips_all_but_the_allow_list(tmp_path: Path) -> None:
    usr = _tree(tmp_path)
    script = tmp_path / "mkosi.finalize"
    script.write_text(finalize_script(["/usr/bin/mount"], []))
    done = subprocess.run(  # the script is Python; run it as mkosi would, with $BUILDROOT
        [sys.executable, str(script)],
        env={"BUILDROOT": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "stripped set-id bits from /usr/bin/su" in done.stderr
    assert "removed file capabilities from /usr/bin/ping" in done.stderr
    assert scan_usr(usr, "/usr", ["/usr/bin/mount"]) == []
    assert stat.S_IMODE((usr / "bin" / "mount").stat().st_mode) == 0o2755


def test_erofs_scan_lists_offenders_in_place() -> None:
    offenders = scan_erofs(ErofsImage.parse(EROFS), "/usr", allowed=["/usr/bin/wall"])
    assert [(o.path, o.problem) for o in offenders] == [
        ("/usr/bin/ping", "file capabilities"),
        ("/usr/bin/su", "set-uid/set-gid bit"),
        ("/usr/lib/dev/loop7", "device node outside /dev"),
        ("/usr/lib/dev/null", "device node outside /dev"),
    ]
    allowed = ["/usr/bin/wall", "/usr/bin/su", "/usr/bin/ping", "/usr/lib/dev/null"]
    remaining = scan_erofs(ErofsImage.parse(EROFS), "/usr", allowed)
    assert [o.path for o in remaining] == ["/usr/lib/dev/loop7", "/usr/lib/dev/null"]


def test_usr_partition_check_fails_listing_offenders(tmp_path: Path) -> None:
    partition = tmp_path / "x.usr.raw"
    partition.write_bytes(EROFS)
    with pytest.raises(BuildError) as caught:
        check_usr_partition(partition, ["/usr/bin/ping"])
    message = str(caught.value)
    assert "/usr/bin/su: set-uid/set-gid bit" in message
    assert "/usr/bin/wall: set-uid/set-gid bit" in message
    assert "/usr/lib/dev/null: device node outside /dev" in message
    assert "/usr/bin/ping" not in message


def test_usr_partition_that_is_not_erofs(tmp_path: Path) -> None:
    partition = tmp_path / "x.usr.raw"
    partition.write_bytes(bytes(8192))
    with pytest.raises(BuildError, match=r"cannot read the usr file system: .*bad magic"):
        check_usr_partition(partition, [])
