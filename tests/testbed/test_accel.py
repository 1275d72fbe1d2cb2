"""Choosing the VM accelerator: the override, and the probe on this machine's /dev/kvm."""

from __future__ import annotations

from pathlib import Path

import pytest

from ultraviolet.errors import UltravioletError
from ultraviolet.testbed.accel import choose_accelerator, probe_kvm
from ultraviolet.testbed.vm import OVMF_CODE, OVMF_VARS
from ultraviolet.tools import ToolsChroot


def test_override_skips_the_probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ULTRAVIOLET_VM_ACCEL", "tcg")
    chosen = choose_accelerator(None, tmp_path, OVMF_CODE, OVMF_VARS)  # type: ignore[arg-type]
    assert (chosen.accelerator, chosen.reason) == ("tcg", "ULTRAVIOLET_VM_ACCEL")
    monkeypatch.setenv("ULTRAVIOLET_VM_ACCEL", "hvf")
    with pytest.raises(UltravioletError, match="expected kvm, tcg or auto"):
        choose_accelerator(None, tmp_path, OVMF_CODE, OVMF_VARS)  # type: ignore[arg-type]


@pytest.mark.vm
def test_probe_decides_with_a_reason(tools_chroot: ToolsChroot, tmp_path: Path) -> None:
    """On these machines KVM has no SMM, which the Secure Boot firmware needs: the probe must
    say so quickly instead of hanging; where KVM works, OVMF must have run under it."""
    result = probe_kvm(tools_chroot, tmp_path, OVMF_CODE, OVMF_VARS)
    assert result.seconds < 35
    if result.accelerator == "kvm":
        assert "BdsDxe" in (tmp_path / "probe-serial.log").read_text(errors="replace")
    else:
        assert result.reason
