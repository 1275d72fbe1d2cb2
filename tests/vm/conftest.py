"""Shared by the VM tests: which accelerator boots here (probed once per session)."""

from __future__ import annotations

import pytest

from ultraviolet.testbed.accel import ProbeResult, choose_accelerator
from ultraviolet.testbed.vm import OVMF_CODE, OVMF_VARS
from ultraviolet.tools import ToolsChroot


@pytest.fixture(scope="session")
def accelerator(tools_chroot: ToolsChroot, tmp_path_factory: pytest.TempPathFactory) -> str:
    probe: ProbeResult = choose_accelerator(
        tools_chroot, tmp_path_factory.mktemp("accel"), OVMF_CODE, OVMF_VARS
    )
    print(f"VM accelerator: {probe.accelerator} ({probe.reason}, probe {probe.seconds:.1f} s)")
    return probe.accelerator
