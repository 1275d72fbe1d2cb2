"""Shared by the VM tests: which accelerator boots here (probed once per session)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ultraviolet.build.keyset import KeySet
from ultraviolet.testbed.accel import ProbeResult, choose_accelerator
from ultraviolet.testbed.vm import OVMF_CODE, OVMF_VARS, VmConfig
from ultraviolet.tools import ToolsChroot


@pytest.fixture(scope="session")
def accelerator(tools_chroot: ToolsChroot, tmp_path_factory: pytest.TempPathFactory) -> str:
    probe: ProbeResult = choose_accelerator(
        tools_chroot, tmp_path_factory.mktemp("accel"), OVMF_CODE, OVMF_VARS
    )
    print(f"VM accelerator: {probe.accelerator} ({probe.reason}, probe {probe.seconds:.1f} s)")
    return probe.accelerator


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
