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
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ultraviolet.errors import ToolError
from ultraviolet.tools import Spawned, ToolsChroot

SERVER_SOCKET = "swtpm.sock"  # tpm2-tools: swtpm:path=...; its control socket is path + ".ctrl"
STARTUP_SECONDS = 10.0
# TPM2_Startup(TPM_SU_CLEAR): tag NO_SESSIONS, size 12, TPM_CC_Startup, TPM_SU_CLEAR.
TPM2_STARTUP_CLEAR = bytes.fromhex("80010000000c000001440000")


def swtpm_argv(
    state: str | Path, ctrl: str | Path, server: str | Path | None = None, *, startup: bool = True
) -> list[str]:
    """swtpm as a TPM 2.0 with state in `state`, control channel on the unix socket `ctrl` and,
    if given, the TPM command channel on the unix socket `server` (without it QEMU sends
    commands over the control channel). With `startup` it starts itself up (TPM2_Startup(CLEAR)
    at locality 0); otherwise the first command must be TPM2_Startup."""
    argv = ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}"]
    if server is not None:
        argv += ["--server", f"type=unixio,path={server}"]
    flags = "not-need-init,startup-clear" if startup else "not-need-init"
    return [*argv, "--ctrl", f"type=unixio,path={ctrl}", "--flags", flags]


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


def manufacture(chroot: ToolsChroot, directory: Path) -> Path:
    """Make the TPM state in directory/state as a vendor would (swtpm_setup): EKs persisted,
    an RSA-2048 EK certificate in NV index 0x01c00002 (and an ECC P-384 one) issued by a local
    CA of this directory, a platform certificate, all four PCR banks active. Returns the CA's
    issuer certificate (PEM). A state that exists is left alone."""
    state, ca = directory / "state", directory / "ca"
    issuer = ca / "issuercert.pem"
    if (state / "tpm2-00.permall").exists():
        return issuer
    state.mkdir(parents=True, exist_ok=True)
    ca.mkdir(parents=True, exist_ok=True)
    (directory / "swtpm_setup.conf").write_text(
        "create_certs_tool = /usr/bin/swtpm_localca\n"
        f"create_certs_tool_config = {directory / 'localca.conf'}\n"
        f"create_certs_tool_options = {directory / 'localca.options'}\n"
    )
    (directory / "localca.conf").write_text(
        f"statedir = {ca}\nsigningkey = {ca / 'signkey.pem'}\n"
        f"issuercert = {issuer}\ncertserial = {ca / 'certserial'}\n"
    )
    (directory / "localca.options").write_text(
        "--platform-manufacturer Ultraviolet\n--platform-version 1\n--platform-model simnode\n"
    )
    chroot.run(
        [
            "swtpm_setup", "--tpm2", "--tpmstate", str(state),
            "--config", str(directory / "swtpm_setup.conf"), "--create-ek-cert",
            "--create-platform-cert", "--pcr-banks", "sha1,sha256,sha384,sha512",
        ],
        binds=[directory],
        timeout=120,
    )  # fmt: skip
    return issuer


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a reused id now belongs to someone else: ours is gone
        return False
    return True


def start_swtpm(
    chroot: ToolsChroot, directory: Path, *, lifetime: float = 1800.0, locality: int = 0
) -> Swtpm:
    """Start swtpm on `directory` (state in directory/state); it kills itself after `lifetime`
    seconds whatever happens to the caller. `locality`: that of TPM2_Startup, which PCR 0
    starts at (firmware with an H-CRTM or a locality 3 startup logs it as StartupLocality)."""
    if not 0 <= locality <= 4:
        raise ToolError(["swtpm"], None, f"locality {locality} is not 0-4")
    state = directory / "state"
    state.mkdir(parents=True, exist_ok=True)
    server = directory / SERVER_SOCKET
    ctrl = directory / (SERVER_SOCKET + ".ctrl")
    for path in (server, ctrl):
        path.unlink(missing_ok=True)
    # --foreground keeps timeout (and so swtpm) in the spawned process group that stop() kills;
    # without it timeout makes a group of its own and swtpm would outlive the test.
    timeout = ["timeout", "--foreground", "--kill-after=5", str(int(lifetime))]
    argv = [*timeout, *swtpm_argv(state, ctrl, server, startup=locality == 0)]
    process = chroot.spawn(argv, log=directory / "swtpm.log", binds=[directory])
    deadline = time.monotonic() + STARTUP_SECONDS
    while not server.exists():
        if not process.running() or time.monotonic() > deadline:
            process.stop()
            log = (directory / "swtpm.log").read_text(errors="replace")[-2000:]
            raise ToolError(process.argv, process.process.poll(), f"no TPM socket: {log}")
        time.sleep(0.05)
    swtpm = Swtpm(directory, process)
    if locality:
        try:
            _startup_at(chroot, swtpm, locality)
        except BaseException:
            swtpm.stop()
            raise
    return swtpm


def _startup_at(chroot: ToolsChroot, swtpm: Swtpm, locality: int) -> None:
    """TPM2_Startup(CLEAR) sent at `locality` (set over the control channel), then back to 0.
    The command goes over the raw command socket, not through tpm2-tools' swtpm TCTI, which
    sets its own locality."""
    ctrl = str(swtpm.socket) + ".ctrl"
    chroot.run(["swtpm_ioctl", "--unix", ctrl, "-l", str(locality)], binds=[swtpm.directory])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as channel:
        channel.settimeout(STARTUP_SECONDS)
        channel.connect(str(swtpm.socket))
        channel.sendall(TPM2_STARTUP_CLEAR)
        answer = channel.recv(64)
    if answer[6:10] != bytes(4):
        raise ToolError(["TPM2_Startup"], None, f"swtpm answered {answer.hex()}")
    chroot.run(["swtpm_ioctl", "--unix", ctrl, "-l", "0"], binds=[swtpm.directory])


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
