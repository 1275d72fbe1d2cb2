"""Render the mkosi tree of a node policy: mkosi.conf, mkosi.repart/ (the build-time layout),
and an extra tree with the image's own repart.d, sysupdate.d and IPE policy."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ultraviolet.build.agent import agent_packages, agent_preset_units, write_agent
from ultraviolet.build.definitions import (
    first_boot_repart,
    sysupdate_transfers,
    verity_slot_size,
)
from ultraviolet.build.factory import (
    PRESET,
    factory_etc_script,
    firmware_links_script,
    preset_file,
)
from ultraviolet.build.health import health_files
from ultraviolet.build.initrd_modules import mkosi_initrd_settings
from ultraviolet.build.mkosi import embedded_tree
from ultraviolet.build.truths import NOEXEC_CMDLINE, finalize_script
from ultraviolet.errors import BuildError
from ultraviolet.formats.ipe import render_ipe
from ultraviolet.formats.unitfile import UnitFile, render_unit, unit
from ultraviolet.policy.ipe import build_ipe_policy
from ultraviolet.policy.model import NodePolicy

BASE_PACKAGES = (
    "linux-image-amd64",
    "systemd",
    "systemd-boot-efi",
    # Debian's systemd-boot has the bless-boot generator: a booted entry with a boot counter is
    # marked good once boot-complete.target is reached (else every try counts as failed).
    "systemd-boot",
    "udev",
    "dbus",
    "systemd-repart",
    "systemd-sysv",
    "cryptsetup",
    "tpm2-tools",
    "e2fsprogs",
    "btrfs-progs",
    # cfg80211 asks for regulatory.db when it loads, and systemd-networkd loads it (its
    # enumeration of nl80211 autoloads the module; systemd issue 27520) on nodes with networking.
    # Without the file the firmware loader tries a load without a file (sysfs fallback),
    # which IPE's FIRMWARE rule denies: one denial per boot. With it, the file (and its
    # signature, which cfg80211 checks) comes from the signed /usr.
    "wireless-regdb",
)
RUNTIME_PACKAGES = {"containerd": ("containerd", "runc"), "none": ()}
RUNTIME_UNITS = {"containerd": ("containerd.service",), "none": ()}
# rw: without it the fresh root is mounted read-only and /sysroot/usr cannot be created (VM).
BASE_CMDLINE = ("console=ttyS0", "systemd.firstboot=no", "rw")
ESP_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class RenderedTree:
    """The mkosi tree (only what shapes /usr and the image) and what the build adds to the UKI
    afterwards, so that changing the latter reuses the mkosi build."""

    directory: Path
    ipe_policy: str | None  # the policy text, signed at build time, shipped in the initrd
    cmdline: tuple[str, ...]  # words appended to the UKI command line


def policy_cmdline(policy: NodePolicy) -> tuple[str, ...]:
    noexec = NOEXEC_CMDLINE if policy.integrity.writable_noexec else ()
    return (*noexec, *policy.boot.cmdline)


def _update_packages(policy: NodePolicy) -> list[str]:
    """Debian ships systemd-sysupdate (and systemd-pull, its downloader) in systemd-container;
    systemd-pull checks SHA256SUMS.gpg by running gpg."""
    update = policy.update
    if not update.source:
        return []
    remote = update.source.startswith(("http://", "https://"))
    return ["systemd-container", *(["gpg"] if remote and update.verify_manifest else [])]


def _packages(policy: NodePolicy) -> list[str]:
    wanted = [
        *BASE_PACKAGES,
        *RUNTIME_PACKAGES[policy.workloads.container_runtime],
        *_update_packages(policy),
        *agent_packages(policy),
        *policy.image.packages,
    ]
    return list(dict.fromkeys(wanted))


def mkosi_conf(policy: NodePolicy) -> UnitFile:
    image = policy.image
    content = [
        ("Bootable", "yes"),
        ("Bootloader", "systemd-boot"),
        ("UnifiedKernelImages", "yes"),
        ("WithDocs", "no"),
        ("Hostname", policy.hostname),
    ]
    content += [("Packages", package) for package in _packages(policy)]
    content.append(("KernelCommandLine", " ".join(BASE_CMDLINE)))
    content += mkosi_initrd_settings(policy.boot.initrd_modules)
    validation = [("SecureBoot", "yes" if policy.boot.secure_boot else "no"), ("Verity", "yes")]
    if policy.boot.secure_boot_auto_enroll:
        validation.append(("SecureBootAutoEnroll", "yes"))
    return unit(
        (
            "Distribution",
            [
                ("Distribution", image.distribution),
                ("Release", image.release),
                ("Architecture", image.architecture),
            ],
        ),
        (
            "Output",
            [
                ("Format", "disk"),
                ("ImageId", image.name),
                ("ImageVersion", image.version),
                ("SectorSize", "512"),
                ("SplitArtifacts", "uki,partitions"),
            ],
        ),
        ("Content", content),
        ("Validation", validation),
    )


def build_repart(policy: NodePolicy) -> dict[str, UnitFile]:
    """mkosi.repart/: ESP and usr slot A at the policy's slot sizes (so that A and B slots are
    alike for updates), labelled NAME_VERSION so that sysupdate can match them."""
    label = f"{policy.image.name}_{policy.image.version}"
    # 4 KiB verity blocks: repart otherwise takes the 512-byte sector size, which makes the
    # hash tree 8x larger (68 MiB for a 1 GiB slot) and does not fit the slot sizes.
    verity = [("VerityMatchKey", "usr"), ("Label", label)]
    blocks = [("VerityDataBlockSizeBytes", "4096"), ("VerityHashBlockSizeBytes", "4096")]
    usr_size = policy.storage.usr_slot_size

    def exact(size: int) -> list[tuple[str, str]]:
        return [("SizeMinBytes", str(size)), ("SizeMaxBytes", str(size))]

    esp = [("Type", "esp"), ("Format", "vfat"), ("CopyFiles", "/boot:/"), ("CopyFiles", "/efi:/")]
    usr = [("Type", "usr"), ("Format", "erofs"), ("CopyFiles", "/usr:/"), ("Verity", "data")]
    return {
        "00-esp.conf": _partition(*esp, *exact(ESP_BYTES)),
        "10-usr.conf": _partition(*usr, *verity, *blocks, *exact(usr_size), ("SplitName", "usr")),
        "11-usr-verity.conf": _partition(
            ("Type", "usr-verity"),
            ("Verity", "hash"),
            *verity,
            *blocks,
            *exact(verity_slot_size(usr_size)),
            ("SplitName", "usr-verity"),
        ),
        # no size: repart sizes signature partitions itself and refuses one
        "12-usr-verity-sig.conf": _partition(
            ("Type", "usr-verity-sig"),
            ("Verity", "signature"),
            *verity,
            ("SplitName", "usr-verity-sig"),
        ),
    }


def _partition(*settings: tuple[str, str]) -> UnitFile:
    return unit(("Partition", list(settings)))


def _write_units(directory: Path, units: dict[str, UnitFile]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, definition in units.items():
        (directory / name).write_text(render_unit(definition))


def render_tree(policy: NodePolicy, directory: Path) -> RenderedTree:
    """Write the complete mkosi tree for `policy` into `directory` (replacing it)."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / "mkosi.conf").write_text(render_unit(mkosi_conf(policy)))
    _write_units(directory / "mkosi.repart", build_repart(policy))
    extra = directory / "mkosi.extra"
    _write_units(extra / "usr/lib/repart.d", first_boot_repart(policy))
    if policy.update.source:
        _write_units(extra / "usr/lib/sysupdate.d", sysupdate_transfers(policy))
    script = directory / "mkosi.finalize"
    script.write_text(
        finalize_script(policy.integrity.suid_allow, policy.integrity.capabilities_allow)
        + factory_etc_script()
        + firmware_links_script()
    )
    (extra / PRESET).parent.mkdir(parents=True, exist_ok=True)
    runtime_units = RUNTIME_UNITS[policy.workloads.container_runtime]
    (extra / PRESET).write_text(preset_file((*runtime_units, *agent_preset_units(policy))))
    for relative, content in health_files(policy).items():
        (extra / relative).parent.mkdir(parents=True, exist_ok=True)
        (extra / relative).write_text(content)
    script.chmod(0o755)
    write_agent(policy, directory, extra)
    _copy_sandbox(directory)
    _copy_extra_tree(policy, extra)
    ipe = build_ipe_policy(policy)
    return RenderedTree(directory, render_ipe(ipe) if ipe else None, policy_cmdline(policy))


def _copy_sandbox(directory: Path) -> None:
    # The package sources that work with this mirror (see the embedded minimal tree).
    shutil.copytree(embedded_tree() / "mkosi.sandbox", directory / "mkosi.sandbox")


def _copy_extra_tree(policy: NodePolicy, extra: Path) -> None:
    if not policy.image.extra_tree:
        return
    source = Path(policy.source).parent / policy.image.extra_tree
    if not source.is_dir():
        raise BuildError(f"image.extra_tree: {source} is not a directory")
    shutil.copytree(source, extra, dirs_exist_ok=True)
