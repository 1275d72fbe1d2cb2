"""The boot-assessment health gate rendered from `[boot] health_units` / `health_checks`."""

from __future__ import annotations

from pathlib import Path

import pytest

from ultraviolet.build.health import (
    DROPIN_PATH,
    FAILURE_MESSAGE,
    HEALTH_UNIT,
    UNIT_PATH,
    health_files,
)
from ultraviolet.errors import PolicyError
from ultraviolet.formats.unitfile import parse_unit
from ultraviolet.policy import parse_policy
from ultraviolet.tools import ToolsChroot

BASE = '[image]\nname = "fixture"\nversion = "1.2.3"\n'


def _files(boot: str) -> dict[str, str]:
    return health_files(parse_policy(BASE + "[boot]\n" + boot, source="node.toml"))


def test_no_checks_means_no_gate() -> None:
    assert _files("") == {}


def test_units_and_commands_become_one_failing_oneshot_that_reboots() -> None:
    files = _files('health_units = ["containerd.service"]\nhealth_checks = ["/usr/bin/false"]\n')
    gate = parse_unit(files[UNIT_PATH])
    assert gate.get("Service", "Type") == "oneshot"
    assert gate.get_all("Service", "ExecStart") == (
        "/usr/bin/systemctl is-active containerd.service",
        "/usr/bin/false",
    )
    assert gate.get("Unit", "FailureAction") == "reboot"
    assert FAILURE_MESSAGE in (gate.get("Service", "ExecStopPost") or "")
    assert gate.get("Unit", "Before") == "boot-complete.target"
    assert "containerd.service" in (gate.get("Unit", "After") or "").split()
    dropin = parse_unit(files[DROPIN_PATH])
    assert dropin.get("Unit", "Requires") == HEALTH_UNIT


@pytest.mark.parametrize(
    ("boot", "expected"),
    [
        ('health_checks = ["false"]', "boot.health_checks: expected a command"),
        ("health_checks = [\"/bin/sh -c 'x'\"]", "boot.health_checks: expected a command"),
        ('health_units = ["containerd"]', "boot.health_units: expected systemd unit names"),
    ],
)
def test_bad_checks_are_policy_errors(boot: str, expected: str) -> None:
    with pytest.raises(PolicyError, match=expected):
        _files(boot + "\n")


@pytest.mark.oracle
def test_systemd_accepts_the_gate(tools_chroot: ToolsChroot, tmp_path: Path) -> None:
    """systemd-analyze verify loads the unit (syntax, ExecStart paths, dependencies)."""
    files = _files(
        'health_units = ["systemd-journald.service"]\nhealth_checks = ["/usr/bin/true"]\n'
    )
    unit_file = tmp_path / HEALTH_UNIT
    unit_file.write_text(files[UNIT_PATH])
    result = tools_chroot.run(
        ["systemd-analyze", "verify", "--man=no", str(unit_file)], binds=[tmp_path], check=False
    )
    complaints = result.stderr.decode(errors="replace")
    assert result.returncode == 0, complaints
    assert "nknown" not in complaints, complaints
