"""The "universal truths" applied to every image: no set-id bits and no file capabilities in
/usr (unless allow-listed), no device nodes outside /dev, writable mounts noexec.

Set-id bits and capabilities are stripped during the build by a mkosi finalize script
(rendered with the allow-list) and the built /usr is scanned afterwards, in place: the erofs
usr partition's metadata is read without extracting it (formats/erofs.py). Anything left that
is not allow-listed fails the build with the list of offenders.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ultraviolet.diskimage import map_file
from ultraviolet.errors import BuildError, FormatError
from ultraviolet.formats.erofs import ErofsImage, ErofsInode

CAPABILITY_XATTR = "security.capability"
# Writable file systems come up noexec, nosuid, nodev (W^X: code runs only from /usr).
NOEXEC_CMDLINE = ("rootflags=noexec,nosuid,nodev",)


@dataclass(frozen=True)
class Offender:
    path: str  # as seen in the image, e.g. /usr/bin/su
    problem: str


def _xattrs(path: Path) -> list[str]:
    try:
        return os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []


def _tree_has_capabilities(path: Path) -> bool:
    return CAPABILITY_XATTR in _xattrs(path)


def _erofs_has_capabilities(image: ErofsImage, inode: ErofsInode) -> bool:
    return bool(inode.xattr_size) and any(x.name == CAPABILITY_XATTR for x in image.xattrs(inode))


def _offences(
    shown: str, mode: int, has_capabilities: Callable[[], bool], allow: set[str]
) -> list[Offender]:
    """What one file breaks: device nodes never pass; set-id bits and capabilities unless
    allow-listed (capabilities are looked up only then: reading xattrs costs I/O)."""
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return [Offender(shown, "device node outside /dev")]
    if shown in allow:
        return []
    found = []
    if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
        found.append(Offender(shown, "set-uid/set-gid bit"))
    if has_capabilities():
        found.append(Offender(shown, "file capabilities"))
    return found


def scan_usr(root: Path, prefix: str, allowed: Iterable[str]) -> list[Offender]:
    """Walk an extracted /usr (`root`, shown as `prefix`) for set-id files, file capabilities
    and device nodes."""
    allow = set(allowed)
    offenders = []
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            shown = prefix + "/" + str(path.relative_to(root))
            capabilities = partial(_tree_has_capabilities, path)
            offenders += _offences(shown, path.lstat().st_mode, capabilities, allow)
    return sorted(offenders, key=lambda o: o.path)


def scan_erofs(image: ErofsImage, prefix: str, allowed: Iterable[str]) -> list[Offender]:
    """The same scan over an erofs image's metadata (`prefix`: where its root is mounted)."""
    allow = set(allowed)
    offenders = []
    for path, inode in image.walk():
        capabilities = partial(_erofs_has_capabilities, image, inode)
        offenders += _offences(f"{prefix}/{path}", inode.mode, capabilities, allow)
    return sorted(offenders, key=lambda o: o.path)


def check_usr_partition(partition: Path, allowed: Iterable[str]) -> None:
    """Scan an erofs usr partition image file (mounted at /usr) in place; fail listing the
    offenders. Only metadata blocks are read from the (mapped) file."""
    with map_file(partition, populate=False) as data:
        try:
            offenders = scan_erofs(ErofsImage.parse(data), "/usr", allowed)
        except FormatError as exc:
            raise BuildError(f"{partition}: cannot read the usr file system: {exc}") from exc
    _fail_listing(offenders)


def check_usr(root: Path, prefix: str, allowed: Iterable[str]) -> None:
    _fail_listing(scan_usr(root, prefix, allowed))


def _fail_listing(offenders: list[Offender]) -> None:
    if offenders:
        listing = "\n".join(f"  {o.path}: {o.problem}" for o in offenders)
        raise BuildError(
            "the image breaks the universal truths (allow-list paths in "
            f"integrity.suid_allow / integrity.capabilities_allow):\n{listing}"
        )


def finalize_script(suid_allow: Iterable[str], caps_allow: Iterable[str]) -> str:
    """A mkosi finalize script (runs with $BUILDROOT) stripping set-id bits and capabilities
    from /usr except the allow-listed paths, printing what it changed."""
    return f"""#!/usr/bin/python3
# Rendered by Ultraviolet: strip set-id bits and file capabilities from /usr.
import os, stat, sys
SUID_ALLOW = {sorted(set(suid_allow))!r}
CAPS_ALLOW = {sorted(set(caps_allow))!r}
root = os.environ["BUILDROOT"]
for directory, _, files in os.walk(os.path.join(root, "usr")):
    for name in files:
        path = os.path.join(directory, name)
        shown = "/" + os.path.relpath(path, root)
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o6000 and shown not in SUID_ALLOW:
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o6000)
            print("ultraviolet: stripped set-id bits from", shown, file=sys.stderr)
        try:
            has_caps = "security.capability" in os.listxattr(path, follow_symlinks=False)
        except OSError:
            has_caps = False
        if has_caps and shown not in CAPS_ALLOW:
            os.removexattr(path, "security.capability", follow_symlinks=False)
            print("ultraviolet: removed file capabilities from", shown, file=sys.stderr)
"""
