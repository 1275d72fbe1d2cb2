"""Rollback for real: 1.0.0 installs an update whose health gate always fails; every trial boot
of it fails the gate and reboots by itself (FailureAction=reboot), systemd-boot counts the tries
down in the UKI's name, and when they are used up the previous version boots again, unasked."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from ultraviolet.build.health import FAILURE_MESSAGE
from ultraviolet.build.keyset import KeySet
from ultraviolet.build.node import BuildResult
from ultraviolet.testbed.checker import END_MARKER, GuestReport, checker_smbios, parse_report
from ultraviolet.testbed.vm import BootResult, boot, boot_again
from ultraviolet.tools import ToolsChroot

from .conftest import example_releases, update_vm

pytestmark = pytest.mark.vm

DONE = re.compile(END_MARKER)
TRIES = 3  # [boot] tries of the example policy: the TriesLeft= the old version installs with


@dataclass(frozen=True)
class RollbackRun:
    update: GuestReport  # 1.0.0 installing the bad 1.0.1
    trials: list[BootResult]  # the boots that ended without a report (the gate rebooted)
    final: GuestReport  # the first boot that reported again
    machine: Path


@pytest.fixture(scope="module")
def releases(tools_chroot: ToolsChroot) -> tuple[BuildResult, BuildResult, KeySet]:
    return example_releases(("tries = 3\n", 'tries = 3\nhealth_checks = ["/usr/bin/false"]\n'))


@pytest.fixture(scope="module")
def rollback_run(
    releases: tuple[BuildResult, BuildResult, KeySet],
    tools_chroot: ToolsChroot,
    module_work: Path,
    accelerator: str,
) -> RollbackRun:
    work = module_work
    config = update_vm(releases, accelerator, work, tools_chroot, settle=120, timeout=900)
    machine = work / "machine"
    first = boot(config, DONE, machine, tools_chroot)
    assert first.ok, first.explain()
    plain = dataclasses.replace(config, smbios=tuple(checker_smbios()), timeout=600)
    trials: list[BootResult] = []
    for _ in range(TRIES + 1):
        booted = boot_again(plain, DONE, machine, tools_chroot)
        if booted.ok:
            return RollbackRun(
                parse_report(first.console()), trials, parse_report(booted.console()), machine
            )
        assert booted.verdict == "exited", booted.explain()  # the gate's reboot ends QEMU
        trials.append(booted)
    raise AssertionError(f"no report after {TRIES + 1} boots:\n{trials[-1].explain()}")


def test_the_bad_update_is_installed_with_boot_counting(rollback_run: RollbackRun) -> None:
    update = rollback_run.update
    assert update.get("version") == "1.0.0"
    assert update.get("update-exit") == "0", update.get("update-log")
    assert f"container-host_1.0.1+{TRIES}-0.efi" in update.listed("esp-ukis-after")


def test_each_trial_boot_fails_the_health_gate_and_reboots(rollback_run: RollbackRun) -> None:
    assert len(rollback_run.trials) == TRIES
    for trial in rollback_run.trials:
        console = trial.console()
        assert FAILURE_MESSAGE in console, console[-3000:]  # the gate's own last word
        assert "UVCHECK-END" not in console


def test_the_previous_version_boots_again_when_the_tries_are_used_up(
    rollback_run: RollbackRun,
) -> None:
    final = rollback_run.final
    assert final.get("version") == "1.0.0"
    assert final.efi_string("loader-entry") == "container-host_1.0.0.efi"
    assert "ID=main" in final.listed("stub-profile")
    ukis = final.listed("esp-ukis")
    assert f"container-host_1.0.1+0-{TRIES}.efi" in ukis, ukis  # tried, never blessed
    assert "container-host_1.0.0.efi" in ukis
    assert final.get("units-failed") == ""
    assert final.get("exec-usr") == "0" and final.get("ipe-enforce") == "1"
