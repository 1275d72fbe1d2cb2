"""Which kernel modules the UKI's initrd keeps: what finds and unlocks disks, nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ultraviolet.build.initrd_modules import (
    INITRD_MODULES_EXCLUDE,
    INITRD_MODULES_INCLUDE,
    mkosi_initrd_settings,
)
from ultraviolet.build.render import mkosi_conf
from ultraviolet.errors import PolicyError
from ultraviolet.policy import load_policy, parse_policy

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "container-host.toml"

# Paths below /usr/lib/modules/<kver>/kernel/ of Debian trixie's 6.12 kernel.
NEEDED = (
    "drivers/block/virtio_blk.ko.xz",
    "drivers/scsi/virtio_scsi.ko.xz",
    "drivers/virtio/virtio_pci.ko.xz",
    "drivers/nvme/host/nvme.ko.xz",
    "drivers/pci/controller/vmd.ko.xz",
    "drivers/ata/ahci.ko.xz",
    "drivers/ata/ata_piix.ko.xz",
    "drivers/scsi/sd_mod.ko.xz",
    "drivers/scsi/megaraid/megaraid_sas.ko.xz",
    "drivers/scsi/mpt3sas/mpt3sas.ko.xz",
    "drivers/scsi/smartpqi/smartpqi.ko.xz",
    "drivers/scsi/hv_storvsc.ko.xz",
    "drivers/scsi/vmw_pvscsi.ko.xz",
    "drivers/block/xen-blkfront.ko.xz",
    "drivers/usb/storage/usb-storage.ko.xz",
    "drivers/usb/storage/uas.ko.xz",
    "drivers/usb/host/xhci-pci.ko.xz",
    "drivers/hid/usbhid/usbhid.ko.xz",
    "drivers/hid/hid-generic.ko.xz",
    "drivers/md/dm-verity.ko.xz",
    "drivers/md/dm-crypt.ko.xz",
    "drivers/md/dm-mod.ko.xz",
    "drivers/char/tpm/tpm_tis_spi.ko.xz",
    "fs/erofs/erofs.ko.xz",
    "fs/ext4/ext4.ko.xz",
    "fs/btrfs/btrfs.ko.xz",
    "fs/fat/vfat.ko.xz",
    "fs/nls/nls_cp437.ko.xz",
    "fs/efivarfs/efivarfs.ko.xz",
    "fs/autofs/autofs4.ko.xz",
    "crypto/xts.ko.xz",
    "arch/x86/crypto/aesni-intel.ko.xz",
    "net/netfilter/x_tables.ko.xz",
)
NOT_NEEDED = (
    "net/wireless/cfg80211.ko.xz",  # its regulatory.db request belongs after switch-root
    "net/mac80211/mac80211.ko.xz",
    "drivers/net/ethernet/intel/e1000e/e1000e.ko.xz",
    "drivers/gpu/drm/amd/amdgpu/amdgpu.ko.xz",
    "sound/pci/hda/snd-hda-intel.ko.xz",
    "drivers/media/usb/uvc/uvcvideo.ko.xz",
    "drivers/scsi/bnx2fc/bnx2fc.ko.xz",  # FCoE offload: would pull in its NIC driver
    "drivers/scsi/cxgbi/cxgb4i/cxgb4i.ko.xz",
)


def kept(path: str) -> bool:
    """mkosi 25's rule (kmod.filter_kernel_modules): excluded unless an include matches."""
    if re.search("|".join(INITRD_MODULES_INCLUDE), path):
        return True
    return not re.search("|".join(INITRD_MODULES_EXCLUDE), path)


@pytest.mark.parametrize("path", NEEDED)
def test_disk_and_unlock_modules_are_kept(path: str) -> None:
    assert kept(path)


@pytest.mark.parametrize("path", NOT_NEEDED)
def test_other_modules_stay_in_usr(path: str) -> None:
    assert not kept(path)


def test_patterns_survive_mkosi_list_parsing() -> None:
    """mkosi splits these settings on commas and joins the patterns with '|'."""
    for pattern in (*INITRD_MODULES_INCLUDE, *INITRD_MODULES_EXCLUDE):
        assert "," not in pattern and not pattern.isspace(), pattern
        re.compile(pattern)


def test_example_mkosi_conf_trims_the_initrd() -> None:
    conf = mkosi_conf(load_policy(EXAMPLE))
    assert conf.get_all("Content", "KernelModulesInitrdExclude") == (".*",)
    assert conf.get_all("Content", "KernelModulesInitrdInclude") == INITRD_MODULES_INCLUDE
    assert [key for key, _ in mkosi_initrd_settings()].count("KernelModulesInitrdExclude") == 1
    # regulatory.db for cfg80211, loaded after switch-root from the signed /usr
    assert "wireless-regdb" in conf.get_all("Content", "Packages")


def test_policy_adds_its_own_initrd_modules() -> None:
    policy = parse_policy(
        '[image]\nname = "n"\nversion = "1"\n'
        '[boot]\ninitrd_modules = ["^drivers/scsi/aic7xxx/", "^drivers/ata/"]\n'
    )
    included = mkosi_conf(policy).get_all("Content", "KernelModulesInitrdInclude")
    assert included == (*INITRD_MODULES_INCLUDE, "^drivers/scsi/aic7xxx/")  # no duplicate


@pytest.mark.parametrize("pattern", ["^drivers/(ata", "^drivers/ata/,^fs/", "a b", ""])
def test_bad_initrd_module_patterns_are_policy_errors(pattern: str) -> None:
    with pytest.raises(PolicyError, match=r"boot\.initrd_modules"):
        parse_policy(
            f'[image]\nname = "n"\nversion = "1"\n[boot]\ninitrd_modules = ["{pattern}"]\n'
        )
