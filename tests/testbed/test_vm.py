"""How the VM runner reads a boot's console (the boots themselves are in tests/vm)."""

from __future__ import annotations

import re

from ultraviolet.testbed.vm import console_verdict

DONE = re.compile(r"UVCHECK-END")
STALL = (
    "[   22.357572] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n"
    "[   22.358886] rcu: \t1-...!: (0 ticks this GP) idle=6220/0/0x0 softirq=17/17 fqs=0\n"
)


def test_a_boot_still_going_has_no_verdict() -> None:
    assert console_verdict("BdsDxe: starting Boot0001\n[    1.0] systemd[1]: ...", DONE) is None


def test_the_wanted_line_wins_over_anything_seen_before_it() -> None:
    assert console_verdict(STALL + "UVCHECK-END\n", DONE) == "matched"


def test_emergency_mode_and_panics_fail() -> None:
    assert console_verdict("You are in emergency mode. After logging in", DONE) == "failed"
    assert console_verdict("Kernel panic - not syncing: VFS", DONE) == "failed"


def test_an_rcu_stall_is_the_emulator_stalling() -> None:
    assert console_verdict(STALL, DONE) == "stalled"
    assert console_verdict(STALL + "Kernel panic - not syncing", DONE) == "failed"
