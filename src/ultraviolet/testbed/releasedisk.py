"""A release directory as a read-only disk for a guest: how the update tests serve the next
version without a network (the guest mounts it where its sysupdate.d Source= points)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ultraviolet.errors import UltravioletError
from ultraviolet.tools import ToolsChroot

# What systemd-sysupdate fetches: the split usr partitions (usr and usr-verity named with their
# partition UUIDs), the UKI and the manifests.
SERVED_PATTERNS = (
    "{stem}_*.usr.raw",
    "{stem}_*.usr-verity.raw",
    "{stem}.usr-verity-sig.raw",
    "{stem}.efi",
)
MANIFESTS = ("SHA256SUMS", "SHA256SUMS.gpg", "SHA256SUMS.p7s")


def release_disk(release: Path, stem: str, output: Path, chroot: ToolsChroot) -> Path:
    """An erofs image of the files of release `stem` that sysupdate needs (hard links into a
    staging directory, so nothing gigabyte-sized is copied twice)."""
    staging = output.with_suffix(".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    names = []
    for pattern in SERVED_PATTERNS:
        found = sorted(p.name for p in release.glob(pattern.format(stem=stem)))
        if len(found) != 1:
            raise UltravioletError(f"{release}: expected one {pattern.format(stem=stem)}")
        names += found
    names += [m for m in MANIFESTS if (release / m).exists()]
    for name in names:
        source = release / name
        try:
            (staging / name).hardlink_to(source)
        except OSError:
            shutil.copyfile(source, staging / name)
    output.unlink(missing_ok=True)
    chroot.run(["mkfs.erofs", "--quiet", str(output), str(staging)], binds=[output.parent, release])
    shutil.rmtree(staging)
    return output
