"""The in-guest checker's transport (SMBIOS credentials) and its report parser."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from ultraviolet.testbed import tamper
from ultraviolet.testbed.checker import (
    CHECK_SCRIPT,
    CheckerError,
    checker_smbios,
    parse_report,
)
from ultraviolet.testbed.vm import BootResult
from ultraviolet.tools import ToolsChroot


def _credentials() -> dict[str, str]:
    found = {}
    for value in checker_smbios():
        assert "," not in value.removeprefix("type=11,")  # QEMU would split the option there
        name, encoded = value.removeprefix("type=11,value=io.systemd.credential.binary:").split(
            "=", 1
        )
        found[name] = base64.b64decode(encoded).decode()
    return found


def test_credentials_install_and_start_the_checker() -> None:
    credentials = _credentials()
    unit = credentials["systemd.extra-unit.ultraviolet-check.service"]
    assert "ExecStart=/bin/sh /run/credentials/@system/ultraviolet-check.sh" in unit
    assert credentials["ultraviolet-check.sh"] == CHECK_SCRIPT
    dropin = credentials["systemd.unit-dropin.multi-user.target~ultraviolet-check"]
    assert "Wants=ultraviolet-check.service" in dropin


def test_report_survives_terminal_noise_and_interleaving(tmp_path: Path) -> None:
    serial = tmp_path / "serial.log"
    serial.write_bytes(
        b"booting\r\n\x1b[!p\x1b]104\x07UVCHECK secureboot 1\r\n"
        b"UVCHECK units-failed \r\n"
        b"host login: UVCHECK system-state starting\r\n"
        b"UVCHECK loader-entry "
        + base64.b64encode(b"\x06\0\0\0" + "a.efi\0".encode("utf-16-le"))
        + b"\r\nUVCHECK pcr-sha256:11 "
        + b"AB" * 32
        + b"\r\nUVCHECK dm usr x\r\nUVCHECK dm root y\r\n"
        b"UVCHECK-END\r\n"
    )
    console = BootResult("matched", 1.0, serial, tmp_path / "vm.log").console()
    report = parse_report(console)
    assert report.get("secureboot") == "1"
    assert report.get("units-failed") == "" and report.listed("units-failed") == []
    assert report.get("system-state") == "starting"
    assert report.efi_string("loader-entry") == "a.efi"
    assert report.pcr(11) == b"\xab" * 32
    assert report.all("dm") == ["usr x", "root y"]
    with pytest.raises(CheckerError, match="no 'ipe-enforce'"):
        report.get("ipe-enforce")
    with pytest.raises(CheckerError, match="not a base64"):
        report.efi_string("secureboot")


def test_unfinished_report_is_an_error() -> None:
    with pytest.raises(CheckerError, match="did not finish \\(1 facts"):
        parse_report("UVCHECK secureboot 1\nKernel panic\n")


@pytest.mark.oracle
def test_script_is_valid_posix_sh(tmp_path: Path, tools_chroot: ToolsChroot) -> None:
    script = tmp_path / "check.sh"
    script.write_text(CHECK_SCRIPT)
    tools_chroot.run(["sh", "-n", str(script)], binds=[tmp_path])  # dash, as in the guest


def test_qemu_io_commands_write_each_byte() -> None:
    patches = [tamper.Patch(10, b"\x00\xff", "why")]
    assert tamper.qemu_io_commands(patches) == ["write -P 0x00 10 1", "write -P 0xff 11 1"]


def test_boot_phases_follow_systemd_analyze() -> None:
    report = parse_report(
        "UVCHECK boot-times FirmwareTimestampMonotonic=3000000|LoaderTimestampMonotonic=1000000"
        "|InitRDTimestampMonotonic=2500000|UserspaceTimestampMonotonic=9000000\n"
        "UVCHECK multi-user-at 30000000\nUVCHECK-END\n"
    )
    assert report.boot_phases() == {
        "firmware": 2.0,
        "loader": 1.0,
        "kernel": 2.5,
        "initrd": 6.5,
        "userspace": 21.0,
    }
    broken = parse_report(
        "UVCHECK boot-times LoaderTimestampMonotonic=1\nUVCHECK multi-user-at 9\nUVCHECK-END\n"
    )
    with pytest.raises(CheckerError, match="boot times incomplete"):
        broken.boot_phases()
