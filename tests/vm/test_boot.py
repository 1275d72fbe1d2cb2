"""Boot the example node image for real: Secure Boot with our keys, swtpm, TCG.

One boot, several links checked from the serial console (the image has no network and the root
account is locked, so the console is the witness): the firmware started our signed systemd-boot
and UKI, the initrd loaded the signed IPE policy in enforce mode, first boot created root, and
the system reached a login prompt with containerd's /usr signed and mounted.
"""

from __future__ import annotations

import re

import pytest

from ultraviolet.build.node import build_cached_node, example_policy_path
from ultraviolet.policy import load_policy
from ultraviolet.testbed.vm import BootResult, VmConfig, boot
from ultraviolet.tools import ToolsChroot

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def first_boot(tools_chroot: ToolsChroot, tmp_path_factory: pytest.TempPathFactory) -> BootResult:
    result, keys = build_cached_node(load_policy(example_policy_path()))
    config = VmConfig(
        image=result.image,
        pk=keys.signer("pk").certificate_path,
        kek=keys.signer("kek").certificate_path,
        db=keys.signer("db").certificate_path,
    )
    work = tmp_path_factory.mktemp("vm")
    return boot(config, re.compile(r"container-host login: "), work, tools_chroot)


def test_reaches_login_prompt(first_boot: BootResult) -> None:
    assert first_boot.ok, first_boot.explain()


def test_ipe_policy_enforced_from_the_initrd(first_boot: BootResult) -> None:
    line = "ultraviolet-ipe: policy container-host active, mode enforce"
    assert line in first_boot.console(), first_boot.explain()


def test_no_emergency_and_no_failed_units(first_boot: BootResult) -> None:
    console = first_boot.console()
    assert first_boot.ok, first_boot.explain()
    assert "emergency mode" not in console
    assert "Failed to start" not in console, console[-3000:]


def test_serial_log_is_kept(first_boot: BootResult) -> None:
    assert first_boot.serial.exists(), first_boot.explain()
    assert first_boot.serial.stat().st_size > 0
