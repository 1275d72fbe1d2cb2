"""Power loss during an update: QEMU is killed while systemd-sysupdate writes the B slot; the
next boot runs the old version as if nothing happened, and the update can simply run again."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from ultraviolet.testbed.checker import END_MARKER, GuestReport, checker_smbios, parse_report
from ultraviolet.testbed.vm import BootResult, boot, boot_again
from ultraviolet.tools import ToolsChroot

from .conftest import example_releases, update_vm

pytestmark = pytest.mark.vm

DONE = re.compile(END_MARKER)
UPDATE_STARTED = re.compile(r"UVCHECK update-started \d+")
# Seconds between the update's start and the power cut: inside the usr slot write (hundreds of
# MiB under TCG); the test checks that the cut really came before sysupdate finished.
CUT_AFTER = 6.0


@dataclass(frozen=True)
class PowerLossRun:
    cut: BootResult  # the boot that was killed during the update
    after: GuestReport  # the next boot
    again: GuestReport  # the same update run once more from there


@pytest.fixture(scope="module")
def power_loss_run(tools_chroot: ToolsChroot, module_work: Path, accelerator: str) -> PowerLossRun:
    work = module_work
    update = update_vm(
        example_releases(),
        accelerator,
        work,
        tools_chroot,
        settle=CUT_AFTER,  # then the VM is killed: no shutdown, no sync
        timeout=900,
    )
    machine = work / "machine"
    cut = boot(update, UPDATE_STARTED, machine, tools_chroot)
    assert cut.ok, cut.explain()
    report = dataclasses.replace(update, smbios=tuple(checker_smbios()), settle=120)
    after = boot_again(report, DONE, machine, tools_chroot)
    assert after.ok, after.explain()
    again = boot_again(dataclasses.replace(update, settle=120), DONE, machine, tools_chroot)
    assert again.ok, again.explain()
    return PowerLossRun(cut, parse_report(after.console()), parse_report(again.console()))


def test_the_power_was_cut_during_the_update(power_loss_run: PowerLossRun) -> None:
    console = power_loss_run.cut.console()
    assert "UVCHECK update-started" in console
    assert "UVCHECK update-exit" not in console, "sysupdate finished before the cut"


def test_the_old_version_boots_after_the_power_loss(power_loss_run: PowerLossRun) -> None:
    after = power_loss_run.after
    assert after.get("version") == "1.0.0"
    assert after.efi_string("loader-entry") == "container-host_1.0.0.efi"
    assert not any("1.0.1" in name for name in after.listed("esp-ukis")), after.listed("esp-ukis")
    assert after.get("units-failed") == ""
    assert after.get("exec-usr") == "0" and after.get("ipe-enforce") == "1"


def test_the_update_runs_again_to_completion(power_loss_run: PowerLossRun) -> None:
    again = power_loss_run.again
    assert again.get("version") == "1.0.0"
    assert again.get("update-exit") == "0", again.get("update-log")
    assert "container-host_1.0.1+3-0.efi" in again.listed("esp-ukis-after")
