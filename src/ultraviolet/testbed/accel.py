"""KVM where it works, TCG where it does not: a short probe with our own firmware line.

The /dev/kvm of these machines is nested and paravirtualised: it exists, but OVMF with SMM
(which Secure Boot needs) dies in it ("KVM internal error", TESTBED.md). So the probe boots
exactly the firmware the tests boot (secboot OVMF, q35 with SMM) under KVM for a few seconds:
if OVMF's boot manager prints on the serial console, KVM is used; an error, an early exit or
silence means TCG. ULTRAVIOLET_VM_ACCEL=kvm|tcg skips the probe.
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from ultraviolet.errors import UltravioletError
from ultraviolet.tools import ToolsChroot

PROBE_SECONDS = 30.0
FIRMWARE_REACHED = "BdsDxe"  # OVMF's boot device selection: the firmware ran to the end
KVM_FAILURES = ("KVM internal error", "failed to initialize kvm", "Could not access KVM")


@dataclass(frozen=True)
class ProbeResult:
    accelerator: str  # "kvm" or "tcg"
    reason: str
    seconds: float


def _probe_script(work: Path, code: str, variables: str) -> str:
    q = shlex.quote
    return f"""set -eu
cd {q(str(work))}
cp {variables} probe-vars.fd
exec qemu-system-x86_64 -machine q35,smm=on -accel kvm -cpu host -m 512 -nodefaults \\
    -global driver=cfi.pflash01,property=secure,value=on \\
    -drive if=pflash,format=raw,unit=0,readonly=on,file={code} \\
    -drive if=pflash,format=raw,unit=1,file=probe-vars.fd \\
    -display none -serial file:probe-serial.log -no-reboot
"""


def probe_kvm(chroot: ToolsChroot, work: Path, code: str, variables: str) -> ProbeResult:
    if not Path("/dev/kvm").exists():
        return ProbeResult("tcg", "no /dev/kvm", 0.0)
    work.mkdir(parents=True, exist_ok=True)
    (work / "probe.sh").write_text(_probe_script(work, code, variables))
    serial, log = work / "probe-serial.log", work / "probe.log"
    serial.unlink(missing_ok=True)
    started = time.monotonic()
    vm = chroot.spawn(["sh", str(work / "probe.sh")], log=log, binds=[work])
    try:
        while time.monotonic() - started < PROBE_SECONDS:
            text = serial.read_text(errors="replace") if serial.exists() else ""
            errors = log.read_text(errors="replace") if log.exists() else ""
            failure = next((f for f in KVM_FAILURES if f in errors), None)
            if failure:
                return ProbeResult("tcg", f"KVM: {failure}", time.monotonic() - started)
            if FIRMWARE_REACHED in text:
                return ProbeResult("kvm", "OVMF ran under KVM", time.monotonic() - started)
            if not vm.running():
                tail = errors.strip().splitlines()[-1:] or ["no output"]
                return ProbeResult("tcg", f"QEMU exited: {tail[0]}", time.monotonic() - started)
            time.sleep(0.5)
    finally:
        vm.stop()
    return ProbeResult("tcg", f"OVMF silent for {PROBE_SECONDS:.0f} s under KVM", PROBE_SECONDS)


def choose_accelerator(chroot: ToolsChroot, work: Path, code: str, variables: str) -> ProbeResult:
    wanted = os.environ.get("ULTRAVIOLET_VM_ACCEL", "auto")
    if wanted in ("kvm", "tcg"):
        return ProbeResult(wanted, "ULTRAVIOLET_VM_ACCEL", 0.0)
    if wanted != "auto":
        raise UltravioletError(f"ULTRAVIOLET_VM_ACCEL={wanted!r}: expected kvm, tcg or auto")
    return probe_kvm(chroot, work, code, variables)
