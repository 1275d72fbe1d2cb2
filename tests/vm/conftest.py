"""Shared by the VM tests: which accelerator boots here (probed once per session), and a
scratch directory per test module for its disks."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ultraviolet.build.keyset import KeySet
from ultraviolet.build.node import BuildResult, build_cached_node, example_policy_path
from ultraviolet.policy import load_policy, parse_policy
from ultraviolet.testbed.accel import ProbeResult, choose_accelerator
from ultraviolet.testbed.checker import checker_smbios
from ultraviolet.testbed.releasedisk import release_disk
from ultraviolet.testbed.vm import OVMF_CODE, OVMF_VARS, VmConfig
from ultraviolet.tools import ToolsChroot


@pytest.fixture(scope="session")
def accelerator(tools_chroot: ToolsChroot, tmp_path_factory: pytest.TempPathFactory) -> str:
    probe: ProbeResult = choose_accelerator(
        tools_chroot, tmp_path_factory.mktemp("accel"), OVMF_CODE, OVMF_VARS
    )
    print(f"VM accelerator: {probe.accelerator} ({probe.reason}, probe {probe.seconds:.1f} s)")
    return probe.accelerator


@pytest.fixture(scope="module")
def module_work(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Path]:
    """A scratch directory for one VM test module: its disks and release copies take gigabytes,
    so it is removed after the module when all of the module's tests passed (kept for
    inspection when one failed), not only when the whole session ends."""
    failed_before = request.session.testsfailed
    work = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield work
    if request.session.testsfailed == failed_before:
        shutil.rmtree(work, ignore_errors=True)


def vm_config(image: Path, keys: KeySet, accelerator: str, **options: Any) -> VmConfig:
    """A VM for `image` with the key set's PK/KEK/db enrolled (what every VM test boots)."""
    return VmConfig(
        image=image,
        pk=keys.signer("pk").certificate_path,
        kek=keys.signer("kek").certificate_path,
        db=keys.signer("db").certificate_path,
        accelerator=accelerator,
        **options,
    )


def example_releases(*edits: tuple[str, str]) -> tuple[BuildResult, BuildResult, KeySet]:
    """Version 1.0.0 of the example policy and a 1.0.1 signed with the same keys, whose policy
    text is further changed by the (old, new) `edits`."""
    example = example_policy_path()
    old, keys = build_cached_node(load_policy(example))
    text = example.read_text().replace('version = "1.0.0"', 'version = "1.0.1"')
    for before, after in edits:
        assert before in text, before
        text = text.replace(before, after)
    new, _ = build_cached_node(parse_policy(text, source=str(example)), keys=keys.directory)
    return old, new, keys


def update_vm(
    releases: tuple[BuildResult, BuildResult, KeySet],
    accelerator: str,
    work: Path,
    chroot: ToolsChroot,
    **options: Any,
) -> VmConfig:
    """A VM of the old image whose checker installs the new release from a read-only disk."""
    old, new, keys = releases
    disk = release_disk(new.release, "container-host_1.0.1", work / "release.erofs", chroot)
    smbios = tuple(checker_smbios("update"))
    return vm_config(old.image, keys, accelerator, smbios=smbios, extra_disks=(disk,), **options)
