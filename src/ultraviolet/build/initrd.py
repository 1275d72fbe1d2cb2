"""Our addition to the initrd: a newc cpio appended to the UKI's .initrd (the kernel unpacks
concatenated archives in order). It carries what must act before /usr is the real one:

- the first-boot repart.d definitions (systemd-repart runs in the initrd and creates root);
- the signed IPE policy and a oneshot unit that loads and activates it before switch-root, in
  audit or enforce mode (systemd 257 has no IPE loader). The `ultraviolet.ipe=enforce|audit`
  command line word (the ipe-enforce UKI profile) overrides the policy's mode.
"""

from __future__ import annotations

from ultraviolet.build.definitions import first_boot_repart
from ultraviolet.formats.cpio import CpioEntry, write_cpio
from ultraviolet.formats.unitfile import render_unit, unit
from ultraviolet.policy.ipe import (
    INITRD_IPE_DIRECTORY,
    INITRD_IPE_MODE,
    INITRD_IPE_POLICY,
    build_ipe_policy,
)
from ultraviolet.policy.model import NodePolicy

LOADER = "usr/lib/ultraviolet/ipe-load"
SERVICE = "ultraviolet-ipe.service"

LOADER_SCRIPT = """#!/bin/sh
# Load and activate the node's IPE policy (rendered by Ultraviolet).
set -eu
ipe=/sys/kernel/security/ipe
dir=/usr/lib/ultraviolet/ipe
if [ ! -d "$ipe" ]; then
    echo "ultraviolet-ipe: this kernel has no IPE; not loading the policy" >&2
    exit 1
fi
read -r mode < "$dir/mode"
read -r name < "$dir/name"
read -r cmdline < /proc/cmdline
case " $cmdline " in
    *" ultraviolet.ipe=enforce "*) mode=enforce ;;
    *" ultraviolet.ipe=audit "*) mode=audit ;;
esac
# IPE enforces from boot: go permissive first so that an audit policy only logs.
[ "$mode" = enforce ] || echo 0 > "$ipe/enforce"
cat "$dir/policy.p7s" > "$ipe/new_policy"
echo 1 > "$ipe/policies/$name/active"
[ "$mode" != enforce ] || echo 1 > "$ipe/enforce"
echo "ultraviolet-ipe: policy $name active, mode $mode"
"""


def _loader_unit() -> str:
    return render_unit(
        unit(
            (
                "Unit",
                [
                    ("Description", "Load the Ultraviolet IPE policy"),
                    ("DefaultDependencies", "no"),
                    ("ConditionPathExists", "/etc/initrd-release"),
                    ("Before", "initrd-switch-root.target initrd.target"),
                ],
            ),
            (
                "Service",
                [
                    ("Type", "oneshot"),
                    ("RemainAfterExit", "yes"),
                    ("ExecStart", "/" + LOADER),
                    ("StandardOutput", "journal+console"),
                ],
            ),
        )
    )


def _directories(paths: list[str]) -> list[CpioEntry]:
    seen: dict[str, None] = {}
    for path in paths:
        parts = path.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            seen.setdefault("/".join(parts[:depth]))
    return [CpioEntry.directory(d) for d in seen]


ROOT_UNLOCK_DROPIN = "usr/lib/systemd/system/systemd-cryptsetup@root.service.d/10-ultraviolet.conf"


def _root_unlock_after_repart() -> str:
    # On a factory reset systemd-repart replaces root with a new LUKS volume in the initrd;
    # unlocking the old one at the same time maps the new ciphertext with the old key, and the
    # fresh file system reads as garbage (seen in the VM: ext4 checksum errors, emergency mode).
    return render_unit(unit(("Unit", [("After", "systemd-repart.service")])))


def initrd_extension(policy: NodePolicy, ipe_signed: bytes | None) -> bytes:
    files = [
        CpioEntry.file(f"usr/lib/repart.d/{name}", render_unit(definition).encode())
        for name, definition in first_boot_repart(policy).items()
    ]
    if policy.storage.root_encryption != "off":
        files.append(CpioEntry.file(ROOT_UNLOCK_DROPIN, _root_unlock_after_repart().encode()))
    ipe = build_ipe_policy(policy)
    if ipe is not None and ipe_signed is not None:
        files += [
            CpioEntry.file(INITRD_IPE_POLICY, ipe_signed),
            CpioEntry.file(f"{INITRD_IPE_DIRECTORY}/name", ipe.name.encode() + b"\n"),
            CpioEntry.file(INITRD_IPE_MODE, policy.integrity.ipe_mode.encode() + b"\n"),
            CpioEntry.file(LOADER, LOADER_SCRIPT.encode(), 0o755),
            CpioEntry.file(f"usr/lib/systemd/system/{SERVICE}", _loader_unit().encode()),
            CpioEntry.symlink(
                f"usr/lib/systemd/system/initrd.target.wants/{SERVICE}", f"../{SERVICE}"
            ),
        ]
    return write_cpio([*_directories([f.path for f in files]), *files])
