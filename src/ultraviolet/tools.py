"""The one place where Ultraviolet runs external programs.

Two kinds of commands exist:
- host commands (`run_host`), e.g. `mmdebstrap` to create the tools chroot;
- tools-chroot commands (`ToolsChroot.run`): the real systemd/mkosi/cryptsetup/tpm2 tooling from a
  Debian trixie chroot kept in a cache directory, created on demand, never touching the host's
  apt sources. Each command runs in a private mount namespace with /dev, /proc, /sys and the
  caller's directories bound at the same paths, so paths need no translation.

Every command runs with an explicit environment, stdin from /dev/null (unless input is given),
is logged, and fails with a ToolError carrying the command, exit code and stderr tail.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ultraviolet.errors import ToolError

log = logging.getLogger("ultraviolet.tools")

SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"

# What the chroot holds; changing this list rebuilds the chroot (its hash is in the stamp file).
TOOLS_PACKAGES: tuple[str, ...] = (
    "mkosi",
    "systemd",
    "systemd-repart",
    "systemd-ukify",
    "systemd-boot-efi",
    "systemd-boot",
    "systemd-container",
    "fdisk",
    "cryptsetup-bin",
    "erofs-utils",
    "dosfstools",
    "mtools",
    "sbsigntool",
    "openssl",
    "tpm2-tools",
    "swtpm",
    "swtpm-tools",
    "qemu-system-x86",
    "qemu-utils",
    "ovmf",
    "python3-virt-firmware",
    "python3-pefile",
    "python3-cryptography",
    "debian-archive-keyring",
    "zstd",
    "cpio",
    "kmod",
    "ca-certificates",
    "gnupg",
    "util-linux",
)

CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STDERR_TAIL_LINES = 25


def cache_dir() -> Path:
    """Where Ultraviolet keeps the tools chroot, cached builds and fixtures."""
    explicit = os.environ.get("ULTRAVIOLET_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "ultraviolet"


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")


def _tail(data: bytes) -> str:
    lines = data.decode("utf-8", errors="replace").rstrip().splitlines()
    return "\n".join(lines[-STDERR_TAIL_LINES:])


def _host_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", CHROOT_PATH),
        "LANG": "C.UTF-8",
        "HOME": os.environ.get("HOME", "/root"),
    }
    if extra:
        env.update(extra)
    return env


def _run_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    input: bytes | None,
    timeout: float | None,
    check: bool,
    stream: Callable[[str], None] | None,
    shown_argv: Sequence[str],
) -> Result:
    log.info("running: %s", " ".join(shown_argv))
    try:
        if stream is None:
            proc = subprocess.run(
                list(argv),
                env=dict(env),
                input=input,
                stdin=None if input is not None else subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
            result = Result(tuple(shown_argv), proc.returncode, proc.stdout, proc.stderr)
        else:
            result = _run_streaming(argv, env, timeout, stream, shown_argv)
    except FileNotFoundError as exc:
        raise ToolError(shown_argv, None, str(exc)) from exc
    except subprocess.TimeoutExpired as exc:
        raise ToolError(shown_argv, None, f"timed out after {timeout} s") from exc
    if check and result.returncode != 0:
        raise ToolError(shown_argv, result.returncode, _tail(result.stderr or result.stdout))
    return result


def _run_streaming(
    argv: Sequence[str],
    env: Mapping[str, str],
    timeout: float | None,
    stream: Callable[[str], None],
    shown_argv: Sequence[str],
) -> Result:
    """Run with stdout+stderr merged, handing each line to `stream` (progress of long builds)."""
    captured: list[bytes] = []
    with subprocess.Popen(
        list(argv),
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            captured.append(line)
            stream(line.decode("utf-8", errors="replace").rstrip("\n"))
        returncode = proc.wait(timeout=timeout)
    output = b"".join(captured)
    return Result(tuple(shown_argv), returncode, output, output)


def run_host(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    timeout: float | None = None,
    check: bool = True,
    stream: Callable[[str], None] | None = None,
) -> Result:
    """Run a program of the host."""
    return _run_process(
        argv,
        env=_host_env(env),
        input=input,
        timeout=timeout,
        check=check,
        stream=stream,
        shown_argv=argv,
    )


def spawn_host(argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None) -> Spawned:
    """Start a host program in the background (own process group, output to `log`), e.g. a
    server that a test stops and restarts."""
    return _spawn(argv, env=_host_env(env), log=log, shown=argv)


def _spawn(
    command: Sequence[str], *, env: Mapping[str, str], log: Path, shown: Sequence[str]
) -> Spawned:
    log.parent.mkdir(parents=True, exist_ok=True)
    log_handle = log.open("wb")
    try:
        process = subprocess.Popen(
            list(command),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise ToolError(shown, None, str(exc)) from exc
    finally:
        log_handle.close()
    log.parent.joinpath(log.name + ".cmd").write_text(" ".join(shown) + "\n")
    return Spawned(tuple(shown), process)


# Runs as `sh -c SCRIPT sh ROOT CWD NBINDS BIND... -- ENV... -- ARGV...` inside a fresh mount
# namespace (unshare). mkosi's own sandbox needs / to be a mount point, hence the self-bind.
_ENTER_SCRIPT = r"""
set -eu
root=$1; cwd=$2; nbinds=$3; shift 3
mount --bind "$root" "$root"
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mount -t tmpfs -o mode=755 tmpfs "$root/run"
if [ -f /etc/resolv.conf ] && [ ! -L "$root/etc/resolv.conf" ]; then
    [ -e "$root/etc/resolv.conf" ] || : > "$root/etc/resolv.conf"
    mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
fi
while [ "$nbinds" -gt 0 ]; do
    path=$1; shift; nbinds=$((nbinds - 1))
    if [ -d "$path" ]; then mkdir -p "$root$path"; else
        mkdir -p "$root$(dirname "$path")"; [ -e "$root$path" ] || : > "$root$path"; fi
    mount --bind "$path" "$root$path"
done
exec chroot "$root" /usr/bin/env -i -C "$cwd" "$@"
"""


@dataclass(frozen=True)
class ToolsChroot:
    """The Debian trixie chroot holding the real tools; created on demand by `ensure`."""

    root: Path

    @classmethod
    def default(cls) -> ToolsChroot:
        return cls(cache_dir() / f"tools-{SUITE}")

    @property
    def stamp(self) -> Path:
        return self.root / ".ultraviolet-tools"

    @staticmethod
    def wanted_stamp() -> str:
        digest = hashlib.sha256("\n".join((SUITE, MIRROR, *TOOLS_PACKAGES)).encode()).hexdigest()
        return f"{SUITE} {digest}\n"

    def is_ready(self) -> bool:
        try:
            return self.stamp.read_text() == self.wanted_stamp()
        except OSError:
            return False

    def ensure(self, *, stream: Callable[[str], None] | None = None) -> ToolsChroot:
        """Create the chroot with mmdebstrap unless an up-to-date one exists."""
        if self.is_ready():
            return self
        if shutil.which("mmdebstrap") is None:
            raise ToolError(
                ["mmdebstrap"], None, "mmdebstrap is not installed: apt-get install mmdebstrap"
            )
        staging = self.root.with_name(self.root.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        run_host(
            [
                "mmdebstrap",
                "--variant=apt",
                "--include=" + ",".join(TOOLS_PACKAGES),
                SUITE,
                str(staging),
                MIRROR,
            ],
            stream=stream,
            timeout=1800,
        )
        (staging / ".ultraviolet-tools").write_text(self.wanted_stamp())
        shutil.rmtree(self.root, ignore_errors=True)
        staging.rename(self.root)
        return self

    def run(
        self,
        argv: Sequence[str],
        *,
        binds: Iterable[str | Path] = (),
        cwd: str | Path = "/",
        env: Mapping[str, str] | None = None,
        input: bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
        stream: Callable[[str], None] | None = None,
    ) -> Result:
        """Run `argv` inside the chroot; each bind is a host path mounted at the same path."""
        return _run_process(
            self._command(argv, binds, cwd, env),
            env=_host_env(None),
            input=input,
            timeout=timeout,
            check=check,
            stream=stream,
            shown_argv=["[tools]", *argv],
        )

    def spawn(
        self,
        argv: Sequence[str],
        *,
        log: Path,
        binds: Iterable[str | Path] = (),
        cwd: str | Path = "/",
        env: Mapping[str, str] | None = None,
    ) -> Spawned:
        """Start `argv` in the chroot in the background (own process group, output to `log`);
        for long-running programs such as a VM that the caller watches and stops."""
        command = self._command(argv, binds, cwd, env)
        return _spawn(command, env=_host_env(None), log=log, shown=["[tools]", *argv])

    def _command(
        self,
        argv: Sequence[str],
        binds: Iterable[str | Path],
        cwd: str | Path,
        env: Mapping[str, str] | None,
    ) -> list[str]:
        self.ensure()
        bind_paths = [str(Path(b).resolve()) for b in binds]
        chroot_env = {"PATH": CHROOT_PATH, "LANG": "C.UTF-8", "HOME": "/root", "TMPDIR": "/tmp"}
        if env:
            chroot_env.update(env)
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--fork",
            "--",
            "/bin/sh",
            "-c",
            _ENTER_SCRIPT,
            "sh",
            str(self.root),
            str(cwd),
            str(len(bind_paths)),
            *bind_paths,
            *(f"{key}={value}" for key, value in chroot_env.items()),
            *argv,
        ]


@dataclass(frozen=True)
class Spawned:
    """A background program in its own process group."""

    argv: tuple[str, ...]
    process: subprocess.Popen[bytes]

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = 5.0) -> int | None:
        """Terminate the whole process group (the program and everything it started)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                return self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
        return self.process.poll()


def tools() -> ToolsChroot:
    """The default tools chroot, created if needed."""
    return ToolsChroot.default().ensure()
