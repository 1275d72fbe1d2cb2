"""Tampered images must not boot into a usable system: the firmware refuses a modified or
unsigned UKI, dm-verity turns a modified /usr block into an I/O error. The patches go into the
VM's overlay (testbed/tamper.py); the built image is never changed."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from ultraviolet.build.keyset import KeySet
from ultraviolet.build.node import BuildResult, build_cached_node, example_policy_path
from ultraviolet.policy import load_policy
from ultraviolet.testbed import tamper
from ultraviolet.testbed.vm import BootResult, boot
from ultraviolet.tools import ToolsChroot

from .conftest import vm_config

pytestmark = pytest.mark.vm

LOGIN = re.compile(r"login: ")
VERITY_CORRUPTION = re.compile(r"device-mapper: verity: \S+: data block \d+ is corrupted")
FIRMWARE_REFUSAL = "Error loading \\EFI\\Linux\\container-host_1.0.0.efi: Access denied"


@pytest.fixture(scope="module")
def example(tools_chroot: ToolsChroot) -> tuple[BuildResult, KeySet]:
    return build_cached_node(load_policy(example_policy_path()))


def _boot_tampered(
    example: tuple[BuildResult, KeySet],
    patches: Callable[[Path], list[tamper.Patch]],
    until: re.Pattern[str],
    work: Path,
    chroot: ToolsChroot,
    accelerator: str,
) -> BootResult:
    result, keys = example
    config = vm_config(
        result.image,
        keys,
        accelerator,
        patches=tuple(patches(result.image)),
        timeout=300,
    )
    return boot(config, until, work, chroot)


@pytest.mark.parametrize(
    "patches", [tamper.uki_byte, tamper.uki_unsigned], ids=["byte", "unsigned"]
)
def test_firmware_refuses_a_modified_or_unsigned_uki(
    example: tuple[BuildResult, KeySet],
    patches: Callable[[Path], list[tamper.Patch]],
    tools_chroot: ToolsChroot,
    tmp_path: Path,
    accelerator: str,
) -> None:
    booted = _boot_tampered(example, patches, LOGIN, tmp_path, tools_chroot, accelerator)
    assert booted.verdict == "failed", booted.explain()
    console = booted.console()
    assert FIRMWARE_REFUSAL in console, booted.explain()
    assert "Linux version" not in console  # the kernel never started


def test_modified_usr_block_is_an_io_error_not_silent_use(
    example: tuple[BuildResult, KeySet], tools_chroot: ToolsChroot, tmp_path: Path, accelerator: str
) -> None:
    booted = _boot_tampered(
        example, tamper.usr_superblock, VERITY_CORRUPTION, tmp_path, tools_chroot, accelerator
    )
    assert booted.verdict == "matched", booted.explain()
    # The corrupted block is refused (reads of it fail with EIO), /usr is never used.
    assert not LOGIN.search(booted.console())
