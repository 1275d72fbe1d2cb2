"""The IPE policy of a node, derived from the [integrity] section of its node policy.

Execution (and, per policy, kernel modules, firmware and kexec) is allowed only from the
initramfs the boot loader verified (boot_verified) and from dm-verity volumes whose root-hash
signature the kernel checked against its keyrings (dmverity_signature), plus explicitly pinned
root hashes (sysext/portable images). Every other operation keeps the kernel's default (ALLOW).
"""

from __future__ import annotations

import re

from ultraviolet.errors import PolicyError
from ultraviolet.formats.ipe import IpePolicy, IpeRule
from ultraviolet.policy.model import NodePolicy

# Where the signed policy and its mode travel inside the UKI's initrd (our appended cpio); the
# build writes them there, `uvctl verify` and `inspect` read them back.
INITRD_IPE_DIRECTORY = "usr/lib/ultraviolet/ipe"
INITRD_IPE_POLICY = f"{INITRD_IPE_DIRECTORY}/policy.p7s"
INITRD_IPE_MODE = f"{INITRD_IPE_DIRECTORY}/mode"

_NUMERIC = re.compile(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def ipe_version(image_version: str) -> tuple[int, int, int]:
    """IPE wants X.Y.Z (each <= 65535) that only grows; take it from the image version's
    leading numeric parts, so that every release's policy supersedes the previous one."""
    match = _NUMERIC.match(image_version)
    if not match:
        raise PolicyError(
            f"image.version {image_version!r} must start with a number for the IPE policy "
            "version (X.Y.Z); e.g. 1.4.2"
        )
    parts = tuple(int(p or 0) for p in match.groups())
    if any(p > 0xFFFF for p in parts):
        raise PolicyError(f"image.version {image_version!r}: IPE version parts must be <= 65535")
    return parts[0], parts[1], parts[2]


def _trusted_sources(policy: NodePolicy) -> list[tuple[tuple[str, str], ...]]:
    sources: list[tuple[tuple[str, str], ...]] = []
    if policy.integrity.allow_boot_verified:
        sources.append((("boot_verified", "TRUE"),))
    if policy.integrity.allow_signed_verity:
        sources.append((("dmverity_signature", "TRUE"),))
    sources += [
        (("dmverity_roothash", f"sha256:{h}"),) for h in policy.integrity.pinned_root_hashes
    ]
    return sources


def build_ipe_policy(policy: NodePolicy) -> IpePolicy | None:
    """None when the node policy turns IPE off."""
    if policy.integrity.ipe_mode == "off":
        return None
    restricted = ["EXECUTE", "KEXEC_IMAGE", "KEXEC_INITRAMFS"]
    if policy.integrity.kernel_modules == "trusted":
        restricted.append("KMODULE")
    if policy.integrity.firmware == "trusted":
        restricted.append("FIRMWARE")
    sources = _trusted_sources(policy)
    if not sources:
        raise PolicyError(
            "integrity: IPE would deny all execution: allow boot_verified, signed verity "
            'volumes or pinned root hashes, or set ipe_mode = "off"'
        )
    rules = tuple(IpeRule(op, source, "ALLOW") for op in restricted for source in sources)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", policy.image.name)[:64]
    return IpePolicy(
        name=name,
        version=ipe_version(policy.image.version),
        default_action="ALLOW",
        op_defaults=tuple((op, "DENY") for op in restricted),
        rules=rules,
    )
