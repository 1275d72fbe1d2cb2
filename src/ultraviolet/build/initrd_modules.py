"""Which kernel modules go into the UKI's initrd.

mkosi's default copies every module of the kernel into the initrd: 91 of its 125 MiB (a
142.9 MB UKI; with this list the modules take 13 MiB and the UKI 61.2 MB), almost all of it
drivers a container host never needs before its root is mounted (GPUs, sound, media, Wi-Fi,
most NICs). The initrd only has to find and unlock the disks: storage controllers of common
servers and VMs, USB storage and keyboards (emergency shell), dm-verity/dm-crypt, the file
systems of /usr, root and the ESP, and the TPM. Everything else loads from the signed /usr
after switch-root, where every module of the kernel is. A policy adds patterns of its own with
boot.initrd_modules (hardware this list misses).

mkosi 25 drops a module matched by KernelModulesInitrdExclude unless
KernelModulesInitrdInclude matches it too, and adds the dependencies of what it keeps (and the
firmware files they declare). Patterns are Python regexes searched in the module's path below
`/usr/lib/modules/<kver>/kernel/`, e.g. `drivers/block/virtio_blk.ko.xz`. mkosi splits the
setting on commas, so no pattern may contain one.
"""

from __future__ import annotations

from collections.abc import Sequence

INITRD_MODULES_EXCLUDE = (".*",)

INITRD_MODULES_INCLUDE = (
    # Disk controllers: SATA/PATA, NVMe (and Intel VMD, which NVMe sits behind on many Xeon
    # servers), SCSI disks and hardware RAID/SAS HBAs (megaraid, mpt3sas, smartpqi, aacraid,
    # FC HBAs for boot from SAN). Not the iSCSI/FCoE offload drivers: they pull in their NICs.
    r"^drivers/ata/",
    r"^drivers/nvme/host/",
    r"^drivers/pci/controller/vmd\.",
    r"^drivers/scsi/(?!(be2iscsi|bnx2fc|bnx2i|csiostor|cxgbi|fcoe|fnic|qedf|qedi|snic)/)",
    r"^drivers/mmc/(core|host)/",
    # Virtual machines: virtio (blk, scsi, PCI, rng, console), Hyper-V, Xen.
    r"^drivers/virtio/",
    r"^drivers/block/(virtio_blk|xen-blkfront|loop)\.",
    r"^drivers/char/(virtio_console|hw_random/virtio-rng)\.",
    r"^drivers/hv/hv_vmbus\.",
    r"^drivers/firmware/(qemu_fw_cfg|dmi-sysfs)\.",
    # USB sticks and keyboards (the emergency shell needs one).
    r"^drivers/usb/(host|storage|core|common)/",
    r"^drivers/hid/(hid-generic\.|usbhid/)",
    # Device mapper (verity, crypt, integrity, multipath) and MD RAID.
    r"^drivers/md/",
    # The TPM that unlocks root (tpm_tis and tpm_crb are built into Debian's kernel).
    r"^drivers/char/tpm/",
    # File systems: erofs (/usr), ext4/btrfs/xfs (root), vfat + code pages (ESP), efivarfs,
    # and what systemd mounts in the initrd.
    r"^fs/(erofs|ext4|jbd2|btrfs|xfs|fat|nls|efivarfs|autofs|configfs|overlayfs)/",
    # systemd (PID 1) loads ip_tables at start: without it the initrd logs a missing module.
    r"^net/(netfilter/x_tables|ipv4/netfilter/ip_tables)\.",
    # Ciphers and hashes for dm-crypt and dm-verity, with their x86 accelerated versions.
    r"^crypto/",
    r"^arch/x86/crypto/",
    r"^lib/",
)


def mkosi_initrd_settings(extra: Sequence[str] = ()) -> list[tuple[str, str]]:
    """The [Content] settings of mkosi.conf that trim the kernel modules initrd; `extra` are
    the policy's own patterns (boot.initrd_modules)."""
    include = dict.fromkeys((*INITRD_MODULES_INCLUDE, *extra))
    return [
        *(("KernelModulesInitrdExclude", pattern) for pattern in INITRD_MODULES_EXCLUDE),
        *(("KernelModulesInitrdInclude", pattern) for pattern in include),
    ]
