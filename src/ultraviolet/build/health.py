"""The health gate of boot assessment: when a new version's trial boot counts as good.

systemd-boot counts tries down in the UKI's file name (`NAME_VERSION+LEFT-DONE.efi`) on every
boot of a version not yet known good; systemd-bless-boot drops the counter once
boot-complete.target is reached (the bless generator pulls that target in only on such trial
boots). A version whose tries run out sorts last, so the previous version boots again.

The policy's `[boot] health_units` and `health_checks` become one oneshot unit that
boot-complete.target requires. It checks with `systemctl is-active` rather than Requires= on
the units: a dependency that fails leaves the gate "not started", not failed, and only a
failed gate reboots (FailureAction=reboot), which makes the rollback automatic. Because the
target exists only on trial boots, a known-good version never reboots on a failing check.
"""

from __future__ import annotations

from ultraviolet.formats.unitfile import UnitFile, render_unit, unit
from ultraviolet.policy.model import NodePolicy

HEALTH_UNIT = "ultraviolet-health.service"
UNIT_PATH = f"usr/lib/systemd/system/{HEALTH_UNIT}"
DROPIN_PATH = "usr/lib/systemd/system/boot-complete.target.d/50-ultraviolet-health.conf"
FAILURE_MESSAGE = "ultraviolet-health: trial boot failed the health gate"
_REPORT = (
    f'/bin/sh -c \'test "$$SERVICE_RESULT" = success || echo "{FAILURE_MESSAGE}'
    " ($$SERVICE_RESULT, $$EXIT_CODE $$EXIT_STATUS): rebooting\" > /dev/console'"
)


def health_unit(policy: NodePolicy) -> UnitFile | None:
    """The gate unit, or None when the policy names no check (every trial boot is good)."""
    units, checks = policy.boot.health_units, policy.boot.health_checks
    if not units and not checks:
        return None
    entries: list[tuple[str, str]] = [
        ("Description", "Ultraviolet health gate: may this version's trial boot count as good?"),
        ("Documentation", "man:systemd-bless-boot.service(8)"),
        ("After", " ".join(("multi-user.target", *units))),
        ("Before", "boot-complete.target"),
        ("FailureAction", "reboot"),
    ]
    if units:
        entries.append(("Wants", " ".join(units)))
    service: list[tuple[str, str]] = [("Type", "oneshot"), ("RemainAfterExit", "yes")]
    if units:
        service.append(("ExecStart", "/usr/bin/systemctl is-active " + " ".join(units)))
    service += [("ExecStart", command) for command in checks]
    # Say on the console why the node reboots ($$: a literal $ for the shell, not systemd).
    service.append(("ExecStopPost", _REPORT))
    return unit(("Unit", entries), ("Service", service))


def health_files(policy: NodePolicy) -> dict[str, str]:
    """Paths (relative to the image root) and contents of the gate, empty without checks."""
    gate = health_unit(policy)
    if gate is None:
        return {}
    dropin = unit(("Unit", [("Requires", HEALTH_UNIT), ("After", HEALTH_UNIT)]))
    return {UNIT_PATH: render_unit(gate), DROPIN_PATH: render_unit(dropin)}
