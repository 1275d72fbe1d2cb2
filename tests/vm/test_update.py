"""A/B update for real: version 1.0.0 boots, systemd-sysupdate in the guest installs 1.0.1 from
a local release directory (a read-only disk, as the policy's Source= points) into the empty B
slots and the ESP with boot counting, and the next boot runs 1.0.1 from the B slot."""

from __future__ import annotations

import base64
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from ultraviolet.build.keyset import KeySet
from ultraviolet.build.node import BuildResult
from ultraviolet.formats.gpt import parse_gpt, root_hash_partition_uuids
from ultraviolet.formats.reference import Reference, parse_reference
from ultraviolet.testbed.checker import END_MARKER, GuestReport, checker_smbios, parse_report
from ultraviolet.testbed.vm import boot, boot_again
from ultraviolet.tools import ToolsChroot

from .conftest import example_releases, update_vm

pytestmark = pytest.mark.vm

DONE = re.compile(END_MARKER)
PHASES = "enter-initrd:leave-initrd:sysinit:ready"


@dataclass(frozen=True)
class UpdateRun:
    before: GuestReport  # first boot of 1.0.0, then the update
    after: GuestReport  # the boot after it
    old: Reference
    new: Reference
    machine: Path


@pytest.fixture(scope="module")
def releases(tools_chroot: ToolsChroot) -> tuple[BuildResult, BuildResult, KeySet]:
    return example_releases()


@pytest.fixture(scope="module")
def update_run(
    releases: tuple[BuildResult, BuildResult, KeySet],
    tools_chroot: ToolsChroot,
    module_work: Path,
    accelerator: str,
) -> UpdateRun:
    old, new, _ = releases
    work = module_work
    config = update_vm(releases, accelerator, work, tools_chroot, settle=120, timeout=900)
    machine = work / "machine"
    first = boot(config, DONE, machine, tools_chroot)
    assert first.ok, first.explain()
    second = boot_again(
        dataclasses.replace(config, smbios=tuple(checker_smbios())), DONE, machine, tools_chroot
    )
    assert second.ok, second.explain()
    return UpdateRun(
        parse_report(first.console()),
        parse_report(second.console()),
        parse_reference(old.reference.read_bytes()),
        parse_reference(new.reference.read_bytes()),
        machine,
    )


def test_sysupdate_installs_the_next_version(update_run: UpdateRun) -> None:
    before = update_run.before
    assert before.get("version") == "1.0.0"
    assert before.get("update-exit") == "0", before.get("update-log")
    ukis = before.listed("esp-ukis-after")
    assert "container-host_1.0.1+3-0.efi" in ukis, ukis  # TriesLeft=3 from the policy
    assert "container-host_1.0.0.efi" in ukis
    # The B slot, read from the GPT the guest sent: labelled with the new version, and the usr
    # and usr-verity partition UUIDs derived from the new root hash (usrhash= alone finds them).
    table = parse_gpt(base64.b64decode(before.get("gpt-after")))
    slots = {(p.type.name if p.type else "?", p.label, p.uuid) for p in table.partitions}
    data_uuid, verity_uuid = root_hash_partition_uuids(update_run.new.usr_root_hash)
    assert ("usr", "container-host_1.0.1", data_uuid) in slots, slots
    assert ("usr-verity", "container-host_1.0.1", verity_uuid) in slots, slots
    assert any(kind == "usr-verity-sig" and "1.0.1" in label for kind, label, _ in slots)
    assert sum(label == "_empty" for _, label, _ in slots) == 0


def test_next_boot_runs_the_new_version_from_the_b_slot(update_run: UpdateRun) -> None:
    after, new = update_run.after, update_run.new
    assert after.get("version") == "1.0.1"
    assert after.efi_string("loader-entry") == "container-host_1.0.1.efi"
    assert f"usrhash={new.usr_root_hash.hex()}" in after.get("cmdline").split()
    assert after.get("exec-usr") == "0"  # the B slot's signature checked by the kernel
    # PCR 11 is what reference.json predicts for the profile that booted (see below).
    profile = _booted_profile(after)
    assert after.pcr(11) == new.pcr11[profile][PHASES]
    assert after.pcr(11) != update_run.old.pcr11[profile][PHASES]
    assert after.get("units-failed") == ""
    # Same encrypted root as before the update, unlocked by the TPM without a prompt.
    roots = [[d for d in r.all("dm") if d.startswith("root ")] for r in (update_run.before, after)]
    assert roots[0] == roots[1] and roots[0], roots


def _booted_profile(report: GuestReport) -> str:
    """The UKI profile systemd-stub started (it writes /run/systemd/stub/profile)."""
    lines = report.listed("stub-profile")
    return next((line[len("ID=") :] for line in lines if line.startswith("ID=")), "main")


def test_the_main_profile_boots_after_an_update(update_run: UpdateRun) -> None:
    """The trial boot starts main (profile 1, main's twin: systemd-boot 257 picks it for a UKI
    that still carries boot counters; see build/rootsig.py), never ipe-enforce or a reset."""
    assert _booted_profile(update_run.after) == "main"
    assert "systemd.factory_reset=1" not in update_run.after.get("cmdline").split()


def test_a_good_boot_is_blessed(update_run: UpdateRun) -> None:
    # systemd-bless-boot drops the counter once boot-complete.target is reached.
    ukis = update_run.after.listed("esp-ukis")
    assert "container-host_1.0.1.efi" in ukis, ukis
    assert not any(u.startswith("container-host_1.0.1+") for u in ukis), ukis
