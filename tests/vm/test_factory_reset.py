"""Factory reset for real: first boot makes an encrypted root; the UKI's factory-reset profile
(chosen once with `bootctl set-oneshot`) makes systemd-repart wipe it and create a new one with a
new LUKS volume; the boot after that is a normal one and keeps the new root."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from ultraviolet.build.node import build_cached_node, example_policy_path
from ultraviolet.policy import load_policy
from ultraviolet.testbed.checker import END_MARKER, GuestReport, checker_smbios, parse_report
from ultraviolet.testbed.vm import boot, boot_again
from ultraviolet.tools import ToolsChroot

from .conftest import vm_config

pytestmark = pytest.mark.vm

DONE = re.compile(END_MARKER)


def _root_volume(report: GuestReport) -> str:
    roots = [d.split()[1] for d in report.all("dm") if d.startswith("root ")]
    assert len(roots) == 1, report.all("dm")
    assert roots[0].startswith("CRYPT-LUKS2-")
    return roots[0]


@pytest.fixture(scope="module")
def three_boots(
    tools_chroot: ToolsChroot, module_work: Path, accelerator: str
) -> list[GuestReport]:
    result, keys = build_cached_node(load_policy(example_policy_path()))
    config = vm_config(
        result.image,
        keys,
        accelerator,
        # the UKI's factory-reset profile is a boot entry of its own: ID@PROFILE-ID
        smbios=tuple(checker_smbios(f"oneshot:{result.uki.name}@factory-reset")),
        settle=120,
    )
    machine = module_work
    reports = []
    first = boot(config, DONE, machine, tools_chroot)
    assert first.ok, first.explain()
    reports.append(parse_report(first.console()))
    plain = dataclasses.replace(config, smbios=tuple(checker_smbios()))
    for _ in range(2):
        booted = boot_again(plain, DONE, machine, tools_chroot)
        assert booted.ok, booted.explain()
        reports.append(parse_report(booted.console()))
    return reports


def test_factory_reset_profile_recreates_root(three_boots: list[GuestReport]) -> None:
    first, reset, _ = three_boots
    assert "container-host_1.0.0.efi@factory-reset" in first.efi_strings("loader-entries")
    assert first.get("oneshot-set") == "0"
    assert "ID=main" in first.listed("stub-profile")
    assert "ID=factory-reset" in reset.listed("stub-profile")
    assert "systemd.factory_reset=1" not in first.get("cmdline").split()
    assert "systemd.factory_reset=1" in reset.get("cmdline").split()
    assert _root_volume(reset) != _root_volume(first)  # wiped and made anew
    assert reset.get("units-failed") == ""


def test_the_next_boot_is_normal_and_keeps_the_new_root(three_boots: list[GuestReport]) -> None:
    _, reset, after = three_boots
    assert "ID=main" in after.listed("stub-profile")  # the one-shot entry was used once
    assert "systemd.factory_reset=1" not in after.get("cmdline").split()
    assert _root_volume(after) == _root_volume(reset)  # unlocked by the TPM, no prompt
    assert after.get("exec-usr") == "0" and after.get("ipe-enforce") == "1"
