"""Universal truths: set-id bits, file capabilities and device nodes in /usr."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from ultraviolet.build.truths import check_usr, finalize_script, scan_usr
from ultraviolet.errors import BuildError

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
