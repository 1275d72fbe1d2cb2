"""The cpio we append to the UKI's initrd: first-boot repart.d and the IPE loader."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ultraviolet.build.initrd import (
    LOADER,
    LOADER_SCRIPT,
    ROOT_UNLOCK_DROPIN,
    SERVICE,
    initrd_extension,
)
from ultraviolet.formats.cpio import read_cpio
from ultraviolet.formats.unitfile import parse_unit
from ultraviolet.policy import parse_policy
from ultraviolet.tools import ToolsChroot

POLICY = parse_policy('[image]\nname = "host"\nversion = "3.1"\n')


def test_contents() -> None:
    entries = {e.path: e for e in read_cpio(initrd_extension(POLICY, b"SIGNED"))}
    assert "usr/lib/repart.d/50-root.conf" in entries
    assert entries["usr/lib/ultraviolet/ipe/policy.p7s"].data == b"SIGNED"
    assert entries["usr/lib/ultraviolet/ipe/name"].data == b"host\n"
    assert entries["usr/lib/ultraviolet/ipe/mode"].data == b"enforce\n"
    assert stat.S_IMODE(entries[LOADER].mode) == 0o755
    link = entries[f"usr/lib/systemd/system/initrd.target.wants/{SERVICE}"]
    assert stat.S_ISLNK(link.mode) and link.data == f"../{SERVICE}".encode()
    service = parse_unit(entries[f"usr/lib/systemd/system/{SERVICE}"].data.decode())
    assert service.get("Service", "ExecStart") == "/" + LOADER
    assert "initrd-switch-root.target" in (service.get("Unit", "Before") or "")
    dropin = parse_unit(entries[ROOT_UNLOCK_DROPIN].data.decode())
    assert dropin.get("Unit", "After") == "systemd-repart.service"
    # every parent directory comes before its children
    paths = list(entries)
    for path in paths:
        parent = path.rsplit("/", 1)[0]
        if "/" in path:
            assert paths.index(parent) < paths.index(path)


def test_ipe_off_ships_no_loader() -> None:
    policy = parse_policy('[image]\nname = "h"\nversion = "1"\n[integrity]\nipe_mode = "off"\n')
    paths = {e.path for e in read_cpio(initrd_extension(policy, None))}
    assert "usr/lib/repart.d/50-root.conf" in paths
    assert not any("ipe" in p for p in paths)


@pytest.mark.oracle
def test_loader_script_parses_in_dash(tools_chroot: ToolsChroot, tmp_path: Path) -> None:
    script = tmp_path / "ipe-load"
    script.write_text(LOADER_SCRIPT)
    tools_chroot.run(["dash", "-n", str(script)], binds=[tmp_path])
