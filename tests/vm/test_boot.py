"""Boot the example node image for real (Secure Boot with our keys, swtpm, TCG) and check every
link the guest can show, with the in-guest checker (testbed/checker.py): one boot, all facts.

The image is the product image, unchanged; the checker comes in as SMBIOS credentials.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from ultraviolet.build.node import build_cached_node, example_policy_path
from ultraviolet.diskimage import open_disk_image
from ultraviolet.formats.authenticode import authenticode_digest
from ultraviolet.formats.eventlog import UefiVariable, parse_event_log, replay
from ultraviolet.formats.fat import FatVolume
from ultraviolet.formats.reference import Reference, parse_reference
from ultraviolet.policy import load_policy
from ultraviolet.testbed.checker import END_MARKER, GuestReport, checker_smbios, parse_report
from ultraviolet.testbed.vm import BootResult, boot
from ultraviolet.tools import ToolsChroot

from .conftest import vm_config

pytestmark = pytest.mark.vm
APPLICATION = "EV_EFI_BOOT_SERVICES_APPLICATION"


@dataclass(frozen=True)
class CheckedBoot:
    boot: BootResult
    guest: GuestReport
    reference: Reference
    image_name: str
    image: Path
    certificates: dict[str, bytes]  # PK/KEK/db variable name -> our certificate (DER)


@pytest.fixture(scope="module")
def first_boot(tools_chroot: ToolsChroot, module_work: Path, accelerator: str) -> CheckedBoot:
    result, keys = build_cached_node(load_policy(example_policy_path()))
    config = vm_config(
        result.image,
        keys,
        accelerator,
        smbios=tuple(checker_smbios()),
    )
    work = module_work
    booted = boot(config, re.compile(END_MARKER), work, tools_chroot)
    assert booted.ok, booted.explain()
    reference = parse_reference(result.reference.read_bytes())
    certificates = {
        name: keys.signer(role).certificate.public_bytes(Encoding.DER)
        for name, role in (("PK", "pk"), ("KEK", "kek"), ("db", "db"))
    }
    guest = parse_report(booted.console())
    return CheckedBoot(booted, guest, reference, result.uki.name, result.image, certificates)


def test_secure_boot_with_our_uki(first_boot: CheckedBoot) -> None:
    guest = first_boot.guest
    assert guest.get("secureboot") == "1"
    assert "[integrity]" in guest.get("lockdown") or "[confidentiality]" in guest.get("lockdown")
    assert guest.efi_string("loader-entry") == first_boot.image_name
    assert guest.efi_string("stub-info").startswith("systemd-stub")


def test_usr_is_the_signed_verity_volume_of_the_release(first_boot: CheckedBoot) -> None:
    guest = first_boot.guest
    words = guest.get("cmdline").split()
    assert f"usrhash={first_boot.reference.usr_root_hash.hex()}" in words
    assert guest.get("usr-mount").split()[:2] == ["/dev/mapper/usr", "erofs"]
    assert any(d.startswith("usr CRYPT-VERITY-") for d in guest.all("dm"))
    # Only signed verity volumes (and the verified initramfs) may execute: that /usr programs
    # run at all shows the kernel checked the root-hash signature against the UEFI db.
    assert guest.get("exec-usr") == "0"


def test_first_boot_created_encrypted_root_and_empty_b_slots(first_boot: CheckedBoot) -> None:
    guest = first_boot.guest
    partitions = guest.listed("partitions")
    assert any("root-x86-64 crypto_LUKS" in p for p in partitions), partitions
    assert sum(" _empty " in f"{p} " for p in partitions) == 3, partitions
    assert any(d.startswith("root CRYPT-LUKS2-") for d in guest.all("dm"))
    assert guest.get("root-mount").split()[:2] == ["/dev/mapper/root", "ext4"]


def test_ipe_enforces_and_denies_unsigned_code(first_boot: CheckedBoot) -> None:
    guest = first_boot.guest
    assert guest.get("ipe-enforce") == "1"
    assert guest.all("ipe-policy") == ["container-host active=1"]
    for directory in ("/tmp", "/var/tmp", "/root", "/run/uvexec"):
        assert guest.get(f"exec-copy:{directory}") == "126", directory
    audit = guest.listed("ipe-audit")
    # /tmp and the exec-mounted tmpfs allow exec by mount flags: IPE is what said no.
    for path in ("/tmp/uvtrue", "/run/uvexec/uvtrue"):
        assert any(f'path="{path}"' in a and "ipe_op=EXECUTE" in a for a in audit), audit


def test_a_normal_boot_has_no_ipe_denial(first_boot: CheckedBoot) -> None:
    """Every IPE denial makes the node's next attestation untrusted (ipe.denials), so a normal
    boot must have none: no FIRMWARE load without a file (cfg80211's regulatory.db, which
    systemd-networkd's nl80211 lookup loads, comes from the signed /usr), no EXECUTE. Read
    before the checker provokes its own denials; the full list is printed on failure."""
    guest = first_boot.guest
    boot_denials = guest.listed("ipe-audit-boot")
    assert boot_denials == [], boot_denials
    assert not any("ipe_op=FIRMWARE" in a for a in guest.listed("ipe-audit")), guest.get(
        "ipe-audit"
    )


def test_universal_truths_hold(first_boot: CheckedBoot) -> None:
    guest = first_boot.guest
    assert guest.get("setid-in-usr") == ""
    writable_exec = guest.listed("writable-exec")
    assert "/" not in writable_exec and "/var" not in writable_exec, writable_exec


def test_pcr11_equals_the_prediction_in_reference_json(first_boot: CheckedBoot) -> None:
    final = "enter-initrd:leave-initrd:sysinit:ready"
    assert first_boot.guest.pcr(11) == first_boot.reference.pcr11["main"][final]


def test_node_is_healthy(first_boot: CheckedBoot) -> None:
    guest = first_boot.guest
    assert guest.get("units-failed") == ""
    assert guest.get("containerd") == "active"  # enabled by the policy's preset on first boot
    console = first_boot.boot.console()
    assert "emergency mode" not in console
    assert "ultraviolet-ipe: policy container-host active, mode enforce" in console


def test_serial_log_is_kept(first_boot: CheckedBoot) -> None:
    assert Path(first_boot.boot.serial).stat().st_size > 0


def _esp_file(image: Path, path: str) -> bytes:
    with open_disk_image(image) as disk:
        (esp,) = disk.partitions_of_type("esp")
        return FatVolume.parse(disk.partition_bytes(esp)).read_file(path)


def test_event_log_replays_to_the_tpm_and_pcr4_measures_our_chain(first_boot: CheckedBoot) -> None:
    """The firmware's TCG event log (sent by the guest) replays to the PCRs the TPM holds, and
    the applications the firmware measured into PCR 4 are, in order, our systemd-boot and our
    UKI, each by its Authenticode digest (systemd-stub starts the kernel itself: no third
    one); PCR 7 records Secure Boot on with our PK, KEK and db."""
    guest = first_boot.guest
    log = parse_event_log(base64.b64decode(guest.get("eventlog")))
    replayed = replay(log, "sha256")
    for pcr in (0, 1, 2, 3, 4, 5, 7):
        assert replayed[pcr] == guest.pcr(pcr), f"PCR {pcr}"
    image = first_boot.image
    expected = [
        authenticode_digest(_esp_file(image, "EFI/BOOT/BOOTX64.EFI")),
        authenticode_digest(_esp_file(image, f"EFI/Linux/{first_boot.image_name}")),
    ]
    applications = [
        e.digests["sha256"] for e in log.events if e.pcr == 4 and e.type_name == APPLICATION
    ]
    assert applications == expected
    variables = {
        content.name: content.data
        for e in log.events
        if e.pcr == 7 and isinstance(content := e.content(), UefiVariable)
    }
    assert variables["SecureBoot"] == b"\x01"
    for name, certificate in first_boot.certificates.items():
        assert certificate in variables[name], name  # an EFI_SIGNATURE_LIST holding our cert
