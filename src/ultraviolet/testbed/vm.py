"""Boot an image under QEMU (TCG) with OVMF Secure Boot, our PK/KEK/db enrolled, and swtpm.

The line is TESTBED.md's: q35 with SMM, the secboot OVMF build, vars made with virt-fw-vars
(Secure Boot enabled with our keys, not setup mode), swtpm as TPM 2.0, the image as a
virtio disk. The image is never altered: a qcow2 overlay on it, grown to `disk_size` because
first boot creates root and the B slots, is what boots (no copy: a few MiB per boot, whatever
the image's size). The serial console goes to a file that is watched
for a verdict; the VM's whole process group is stopped as soon as one is seen or time runs out.
"""

from __future__ import annotations

import re
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ultraviolet.testbed.swtpm import swtpm_shell
from ultraviolet.testbed.tamper import Patch, qemu_io_commands
from ultraviolet.tools import Spawned, ToolsChroot

OWNER_GUID = "a3f2a0f4-7f0e-4c55-9b3a-6f1d2b6c7e51"
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
# CSI sequences (with private and intermediate bytes: getty's "ESC [ ! p" soft reset) and OSC
# strings (ESC ] 104 ... BEL/ST): what a terminal would swallow.
_TERMINAL_CONTROL = re.compile(r"\x1b\[[0-9;=?<>!]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?")
FAILURE = re.compile(r"You are in emergency mode|Kernel panic|Security Violation|Access Denied")
# TCG now and then never runs the guest's second vCPU: its kernel reports an RCU stall from
# its first seconds on and never finishes booting (seen once in a CI run of ~40 boots, on the
# boot after QEMU was killed). That is the emulator failing, not the image: such a boot is
# cut short and the machine powered on once more (boot_again's `stall_retries`).
EMULATOR_STALL = re.compile(r"rcu: INFO: rcu_preempt detected stalls on CPUs")


@dataclass(frozen=True)
class VmConfig:
    image: Path
    pk: Path
    kek: Path
    db: Path
    disk_size: str = "8G"
    memory: str = "2G"
    timeout: float = 420.0
    smbios: tuple[str, ...] = ()  # extra `-smbios` values (credentials for the checker)
    patches: tuple[Patch, ...] = ()  # written into the overlay before boot (tamper tests)
    extra_disks: tuple[Path, ...] = ()  # read-only raw disks after the boot disk (updates)
    settle: float = 0.0  # seconds to let the guest power off by itself after `until` matched
    accelerator: str = "tcg"  # or "kvm" where testbed/accel.py's probe says it works
    # QEMU user-mode networking (a virtio NIC; DHCP gives 10.0.2.15, the host is 10.0.2.2 and
    # its 127.0.0.1 services are reachable there). Off: no NIC at all.
    network: bool = False


@dataclass(frozen=True)
class BootResult:
    verdict: str  # "matched", "failed" (emergency/panic/refused), "timeout", "exited",
    # "stalled" (EMULATOR_STALL)
    seconds: float
    serial: Path
    log: Path  # what the VM script itself printed (virt-fw-vars, cp, swtpm, qemu)

    @property
    def ok(self) -> bool:
        return self.verdict == "matched"

    def console(self) -> str:
        """The serial console without escape sequences; empty if the VM never wrote one."""
        if not self.serial.exists():
            return ""
        raw = self.serial.read_bytes().decode("utf-8", errors="replace")
        return _TERMINAL_CONTROL.sub("", raw).replace("\r", "")

    def explain(self, tail: int = 3000) -> str:
        """Verdict, the VM script's output (why QEMU never started, say), the console tail."""
        script = self.log.read_text(errors="replace")[-tail:] if self.log.exists() else ""
        return (
            f"{self.verdict} after {self.seconds:.0f} s\n"
            f"--- VM script output ({self.log}):\n{script}\n"
            f"--- serial console ({self.serial}):\n{self.console()[-tail:]}"
        )


def _script(config: VmConfig, work: Path, serial: str) -> str:
    """The VM's shell script. Machine state (firmware variables, the disk overlay, the TPM)
    is made only when missing, so the next boot of the same work directory continues it."""
    q = shlex.quote
    guid = OWNER_GUID
    smbios = "".join(f" \\\n    -smbios {q(value)}" for value in config.smbios)
    writes = "".join(f" -c {q(c)}" for c in qemu_io_commands(list(config.patches)))
    tamper = f"qemu-io -f qcow2{writes} disk.qcow2 >/dev/null\n" if writes else ""
    return f"""set -eu
cd {q(str(work))}
[ -e vars.fd ] || virt-fw-vars --input {OVMF_VARS} --output vars.fd \\
    --set-pk {guid} {q(str(config.pk))} --add-kek {guid} {q(str(config.kek))} \\
    --add-db {guid} {q(str(config.db))} --no-microsoft --secure-boot >/dev/null
[ -e disk.qcow2 ] || \\
    qemu-img create -q -f qcow2 -b {q(str(config.image))} -F raw disk.qcow2 {q(config.disk_size)}
{tamper}mkdir -p tpm
rm -f swtpm.sock
{swtpm_shell("tpm", "swtpm.sock")} &
for i in 1 2 3 4 5 6 7 8 9 10; do [ -S swtpm.sock ] && break; sleep 0.5; done
exec qemu-system-x86_64 -machine q35,smm=on {_accelerator(config)} -smp 2 \\
    -m {q(config.memory)} -global driver=cfi.pflash01,property=secure,value=on \\
    -drive if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE} \\
    -drive if=pflash,format=raw,unit=1,file=vars.fd \\
    -chardev socket,id=chrtpm,path=swtpm.sock -tpmdev emulator,id=tpm0,chardev=chrtpm \\
    -device tpm-tis,tpmdev=tpm0 \\
    -drive if=none,id=disk,format=qcow2,file=disk.qcow2 \\
    -device virtio-blk-pci,drive=disk,bootindex=1{_extra_disks(config)} \\
    -display none -serial file:{serial} -no-reboot{_nic(config)}{smbios}
"""


def _accelerator(config: VmConfig) -> str:
    if config.accelerator == "kvm":
        return "-accel kvm -cpu host"
    return "-accel tcg,thread=multi -cpu max"


def _nic(config: VmConfig) -> str:
    """Without `network` QEMU's defaults stay as they were. No option ROM (romfile=): iPXE
    would be one more driver in the firmware's boot path and its measurements."""
    if not config.network:
        return ""
    return " \\\n    -netdev user,id=net0 -device virtio-net-pci,netdev=net0,romfile="


def _extra_disks(config: VmConfig) -> str:
    q = shlex.quote
    return "".join(
        f" \\\n    -drive if=none,id=extra{n},format=raw,readonly=on,file={q(str(path))}"
        f" -device virtio-blk-pci,drive=extra{n}"
        for n, path in enumerate(config.extra_disks)
    )


STATE_FILES = ("vars.fd", "disk.qcow2", "tpm")


def boot(config: VmConfig, until: re.Pattern[str], work: Path, chroot: ToolsChroot) -> BootResult:
    """A fresh machine (new firmware variables, disk overlay and TPM) booted until `until`."""
    for name in STATE_FILES:
        path = work / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return boot_again(config, until, work, chroot)


def boot_again(
    config: VmConfig,
    until: re.Pattern[str],
    work: Path,
    chroot: ToolsChroot,
    *,
    stall_retries: int = 1,
) -> BootResult:
    """Boot the machine in `work` as it was left (disk, TPM, firmware variables): a reboot.

    Stops on `until` (then gives the guest `config.settle` seconds to power off by itself, so
    its disk is left clean), on a failure pattern, when QEMU exits, or at the timeout. A boot
    the emulator stalled is powered off and started again, up to `stall_retries` times."""
    result = _boot_once(config, until, work, chroot)
    if result.verdict == "stalled" and stall_retries > 0:
        return boot_again(config, until, work, chroot, stall_retries=stall_retries - 1)
    return result


def _boot_once(
    config: VmConfig, until: re.Pattern[str], work: Path, chroot: ToolsChroot
) -> BootResult:
    work.mkdir(parents=True, exist_ok=True)
    index = len(list(work.glob("serial-*.log")))
    serial, log = work / f"serial-{index}.log", work / f"vm-{index}.log"
    (work / "vm.sh").write_text(_script(config, work, serial.name))
    binds = {work, config.image.parent, config.pk.parent, config.kek.parent, config.db.parent}
    binds.update(path.parent for path in config.extra_disks)
    started = time.monotonic()
    vm = chroot.spawn(["sh", str(work / "vm.sh")], log=log, binds=sorted(binds))
    try:
        verdict = _watch(vm, serial, until, started, config.timeout)
        if verdict == "matched":
            settle_until = time.monotonic() + config.settle
            while vm.running() and time.monotonic() < settle_until:
                time.sleep(0.5)
    finally:
        vm.stop()
    return BootResult(verdict, time.monotonic() - started, serial, log)


def _watch(
    vm: Spawned, serial: Path, until: re.Pattern[str], started: float, timeout: float
) -> str:
    while time.monotonic() - started < timeout:
        text = serial.read_bytes().decode("utf-8", "replace") if serial.exists() else ""
        verdict = console_verdict(text, until)
        if verdict is not None:
            return verdict
        if not vm.running():
            return "exited"
        time.sleep(1.0)
    return "timeout"


def console_verdict(text: str, until: re.Pattern[str]) -> str | None:
    """What the console so far says of the boot: "matched", "failed", "stalled" or None."""
    if until.search(text):
        return "matched"
    if FAILURE.search(text):
        return "failed"
    if EMULATOR_STALL.search(text):
        return "stalled"
    return None
