"""A software TPM (swtpm) for tests: one socket instance in a directory, stopped for sure.

The same swtpm command line serves the VM testbed (QEMU talks to the control socket) and the
simulated node (tpm2-tools talk to the server socket through the `swtpm:` TCTI). The process
runs under `timeout`, so a test that dies without cleaning up does not leave it behind; the
context manager stops its process group by PID. The state directory keeps the TPM's NV
(its endorsement seed, persistent objects): starting again on it is a reboot of the same TPM.
"""

from __future__ import annotations

import os
import shlex
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ultraviolet.errors import ToolError
from ultraviolet.tools import Spawned, ToolsChroot

SERVER_SOCKET = "swtpm.sock"  # tpm2-tools: swtpm:path=...; its control socket is path + ".ctrl"
STARTUP_SECONDS = 10.0


def swtpm_argv(state: str | Path, ctrl: str | Path, server: str | Path | None = None) -> list[str]:
    """swtpm as a TPM 2.0 with state in `state`, control channel on the unix socket `ctrl` and,
    if given, the TPM command channel on the unix socket `server` (without it QEMU sends
    commands over the control channel). It starts itself up (TPM2_Startup(CLEAR))."""
    argv = ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}"]
    if server is not None:
        argv += ["--server", f"type=unixio,path={server}"]
    return [*argv, "--ctrl", f"type=unixio,path={ctrl}", "--flags", "not-need-init,startup-clear"]


def swtpm_shell(state: str | Path, ctrl: str | Path) -> str:
    """The command line for a shell script (the VM's)."""
    return shlex.join(swtpm_argv(state, ctrl))


@dataclass(frozen=True)
class Swtpm:
    directory: Path
    process: Spawned

    @property
    def socket(self) -> Path:
        return self.directory / SERVER_SOCKET

    @property
    def tcti(self) -> str:
        return f"swtpm:path={self.socket}"

    def running(self) -> bool:
        return self.process.running()

    def stop(self) -> None:
        """Stop swtpm and wait until its whole process group is gone: swtpm holds a lock on its
        state directory until it has exited, and a restart on the same state needs it."""
        self.process.stop(grace=5.0)
        group = self.process.process.pid
        deadline = time.monotonic() + STARTUP_SECONDS
        while _group_alive(group):
            if time.monotonic() > deadline:
                os.killpg(group, signal.SIGKILL)
            time.sleep(0.02)
        for path in (self.socket, self.socket.with_name(SERVER_SOCKET + ".ctrl")):
            path.unlink(missing_ok=True)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a reused id now belongs to someone else: ours is gone
        return False
    return True


def start_swtpm(chroot: ToolsChroot, directory: Path, *, lifetime: float = 1800.0) -> Swtpm:
    """Start swtpm on `directory` (state in directory/state); it kills itself after `lifetime`
    seconds whatever happens to the caller."""
    state = directory / "state"
    state.mkdir(parents=True, exist_ok=True)
    socket = directory / SERVER_SOCKET
    ctrl = directory / (SERVER_SOCKET + ".ctrl")
    for path in (socket, ctrl):
        path.unlink(missing_ok=True)
    # --foreground keeps timeout (and so swtpm) in the spawned process group that stop() kills;
    # without it timeout makes a group of its own and swtpm would outlive the test.
    timeout = ["timeout", "--foreground", "--kill-after=5", str(int(lifetime))]
    argv = [*timeout, *swtpm_argv(state, ctrl, socket)]
    process = chroot.spawn(argv, log=directory / "swtpm.log", binds=[directory])
    deadline = time.monotonic() + STARTUP_SECONDS
    while not socket.exists():
        if not process.running() or time.monotonic() > deadline:
            process.stop()
            log = (directory / "swtpm.log").read_text(errors="replace")[-2000:]
            raise ToolError(process.argv, process.process.poll(), f"no TPM socket: {log}")
        time.sleep(0.05)
    return Swtpm(directory, process)


@contextmanager
def running_swtpm(
    chroot: ToolsChroot, directory: Path, *, lifetime: float = 1800.0
) -> Iterator[Swtpm]:
    """A started swtpm for the duration of the block."""
    swtpm = start_swtpm(chroot, directory, lifetime=lifetime)
    try:
        yield swtpm
    finally:
        swtpm.stop()
