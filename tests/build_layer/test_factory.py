"""Hermetic /usr: the built /etc kept in /usr/share/factory/etc and restored by tmpfiles."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ultraviolet.build.factory import (
    FACTORY_ETC,
    TMPFILES,
    factory_etc_script,
    firmware_links_script,
    preset_file,
)
from ultraviolet.build.truths import finalize_script
from ultraviolet.tools import ToolsChroot


def _build_root(tmp_path: Path) -> Path:
    root = tmp_path / "buildroot"
    etc = root / "etc"
    (etc / "containerd").mkdir(parents=True)
    (etc / "containerd" / "config.toml").write_text("version = 2\n")
    (etc / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (etc / "shadow").write_text("root:!:1::::::\n")
    os.chmod(etc / "shadow", 0o640)
    (etc / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (etc / "localtime").symlink_to("/usr/share/zoneinfo/Etc/UTC")
    (etc / "100%").write_text("odd name\n")
    (root / "usr" / "bin").mkdir(parents=True)
    return root


def _finalize(root: Path) -> str:
    script = root.parent / "mkosi.finalize"
    script.write_text(finalize_script([], []) + factory_etc_script())
    done = subprocess.run(  # Python, run as mkosi runs it: with $BUILDROOT
        [sys.executable, str(script)],
        env={"BUILDROOT": str(root)},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stderr


def test_etc_is_kept_in_usr_without_per_node_files(tmp_path: Path) -> None:
    root = _build_root(tmp_path)
    assert "/etc kept as" in _finalize(root)
    factory = root / FACTORY_ETC
    assert (factory / "containerd" / "config.toml").read_text() == "version = 2\n"
    assert os.readlink(factory / "localtime") == "/usr/share/zoneinfo/Etc/UTC"
    assert oct((factory / "shadow").stat().st_mode & 0o777) == "0o640"
    assert not (factory / "machine-id").exists()
    lines = (root / TMPFILES).read_text().splitlines()[1:]
    assert "C /etc/passwd - - - - /usr/share/factory/etc/passwd" in lines
    assert "C /etc/100%% - - - - /usr/share/factory/etc/100%%" in lines
    assert not any("machine-id" in line for line in lines)
    _finalize(root)  # idempotent: a rerun replaces the factory copy
    assert (factory / "passwd").is_file()


def test_preset_file() -> None:
    assert preset_file(["containerd.service"]).splitlines()[1:] == [
        "enable containerd.service",
        "disable systemd-pcrlock-make-policy.service",
    ]


@pytest.mark.oracle
def test_systemd_tmpfiles_restores_etc_into_an_empty_root(
    tmp_path: Path, tools_chroot: ToolsChroot
) -> None:
    """What first boot (and a factory reset) does, with the real systemd-tmpfiles: an empty
    /etc gets the factory entries; a file the node changed is left alone on the next run."""
    root = _build_root(tmp_path)
    _finalize(root)
    for entry in (root / "etc").iterdir():  # the new root's /etc starts empty
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    config = str(root / TMPFILES)  # read from the host path; --root applies to what it makes
    argv = ["systemd-tmpfiles", f"--root={root}", "--create", config]
    tools_chroot.run(argv, binds=[tmp_path])
    etc = root / "etc"
    assert (etc / "containerd" / "config.toml").read_text() == "version = 2\n"
    assert (etc / "passwd").read_text().startswith("root:")
    assert (etc / "100%").read_text() == "odd name\n"
    assert not (etc / "machine-id").exists()
    (etc / "passwd").write_text("changed on the node\n")
    tools_chroot.run(argv, binds=[tmp_path])
    assert (etc / "passwd").read_text() == "changed on the node\n"


def _regdb_root(tmp_path: Path) -> Path:
    """What wireless-regdb leaves in a merged-/usr build root: the files in /usr/lib/firmware,
    the names the kernel asks for linked through update-alternatives in /etc."""
    root = tmp_path / "buildroot"
    firmware = root / "usr" / "lib" / "firmware"
    firmware.mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "etc" / "alternatives").mkdir(parents=True)
    for name in ("regulatory.db", "regulatory.db.p7s"):
        (firmware / f"{name}-debian").write_bytes(b"signed by debian\n")
        (root / "etc" / "alternatives" / name).symlink_to(f"/lib/firmware/{name}-debian")
        (firmware / name).symlink_to(f"/etc/alternatives/{name}")
    return root


def _run_firmware_links(root: Path) -> subprocess.CompletedProcess[str]:
    script = root.parent / "mkosi.finalize"
    script.write_text(finalize_script([], []) + firmware_links_script())
    return subprocess.run(  # as mkosi runs it, with $BUILDROOT
        [sys.executable, str(script)], env={"BUILDROOT": str(root)}, capture_output=True, text=True
    )


def test_firmware_links_point_into_usr_not_through_etc(tmp_path: Path) -> None:
    """cfg80211's regulatory.db must be found from /usr alone: a node's /etc is filled by
    tmpfiles, possibly after systemd-networkd has loaded cfg80211 (then the firmware loader
    falls back to a load without a file, which IPE denies)."""
    root = _regdb_root(tmp_path)
    done = _run_firmware_links(root)
    assert done.returncode == 0, done.stderr
    firmware = root / "usr" / "lib" / "firmware"
    for name in ("regulatory.db", "regulatory.db.p7s"):
        assert os.readlink(firmware / name) == f"{name}-debian"
        assert (firmware / name).read_bytes() == b"signed by debian\n"
    shutil.rmtree(root / "etc")  # a node's /etc before tmpfiles ran
    assert (firmware / "regulatory.db").is_file()


def test_firmware_link_to_a_missing_file_fails_the_build(tmp_path: Path) -> None:
    root = _regdb_root(tmp_path)
    (root / "usr" / "lib" / "firmware" / "regulatory.db-debian").unlink()
    done = _run_firmware_links(root)
    assert done.returncode != 0
    assert "cannot pin firmware link" in done.stderr
