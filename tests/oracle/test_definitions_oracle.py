"""Our first-boot repart.d and sysupdate.d definitions, as the real tools read them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ultraviolet.build.definitions import first_boot_repart, sysupdate_transfers
from ultraviolet.formats.unitfile import render_unit
from ultraviolet.policy import parse_policy
from ultraviolet.tools import ToolsChroot

from .conftest import RepartImage

pytestmark = pytest.mark.oracle

POLICY = parse_policy(
    '[image]\nname = "fixture"\nversion = "1.2.3"\n'
    '[storage]\nusr_slot_size = "64M"\nroot_min_size = "256M"\nswap_size = "32M"\n'
    '[update]\nsource = "/srv/releases"\n'
)


def _write(definitions: dict[str, object], directory: Path) -> None:
    directory.mkdir()
    for name, definition in definitions.items():
        (directory / name).write_text(render_unit(definition))  # type: ignore[arg-type]


def test_first_boot_plan(
    repart_image: RepartImage, tools_chroot: ToolsChroot, tmp_path: Path
) -> None:
    image = tmp_path / "disk.raw"
    shutil.copyfile(repart_image.image, image)
    _write(first_boot_repart(POLICY), tmp_path / "repart.d")
    result = tools_chroot.run(
        [
            "systemd-repart",
            "--dry-run=yes",
            "--offline=yes",
            "--json=short",
            "--size=2G",
            f"--definitions={tmp_path / 'repart.d'}",
            str(image),
        ],
        binds=[tmp_path],
    )
    plan = json.loads(result.text)
    by_file = {Path(p["file"]).name: p for p in plan if p.get("file")}
    for existing in (
        "00-esp.conf",
        "10-usr-a.conf",
        "11-usr-verity-a.conf",
        "12-usr-verity-sig-a.conf",
    ):
        assert by_file[existing]["activity"] == "unchanged", existing
    for created, kind in (
        ("20-usr-b.conf", "usr-x86-64"),
        ("21-usr-verity-b.conf", "usr-x86-64-verity"),
        ("22-usr-verity-sig-b.conf", "usr-x86-64-verity-sig"),
        ("50-root.conf", "root-x86-64"),
        ("70-swap.conf", "swap"),
    ):
        entry = by_file[created]
        assert (entry["activity"], entry["type"]) == ("create", kind), created
    assert by_file["20-usr-b.conf"]["label"] == "_empty"
    assert by_file["20-usr-b.conf"]["raw_size"] == 64 << 20


def test_sysupdate_lists_a_local_release(tools_chroot: ToolsChroot, tmp_path: Path) -> None:
    """The UKI transfer, read by systemd-sysupdate against a local release directory.

    The partition transfers need a block device whose erofs/vfat the kernel can mount; this
    host kernel has no erofs, so they are exercised in the VM tests, not here."""
    # With --root, sysupdate reads definitions, sources and targets below the root.
    root = tmp_path / "root"
    releases = root / "srv" / "releases"
    releases.mkdir(parents=True)
    for suffix in ("usr.raw", "usr-verity.raw", "usr-verity-sig.raw", "efi"):
        (releases / f"fixture_1.2.4.{suffix}").write_bytes(b"x" * 4096)
    policy = parse_policy(
        '[image]\nname = "fixture"\nversion = "1.2.3"\n'
        '[update]\nsource = "/srv/releases"\nverify_manifest = false\n'
    )
    transfers = sysupdate_transfers(policy)
    assert set(transfers) == {
        "50-usr.transfer",
        "51-usr-verity.transfer",
        "52-usr-verity-sig.transfer",
        "60-uki.transfer",
    }
    _write({"60-uki.transfer": transfers["60-uki.transfer"]}, root / "sysupdate.d")
    (root / "efi" / "EFI" / "Linux").mkdir(parents=True)
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "usr" / "lib" / "os-release").write_text(
        "ID=debian\nIMAGE_ID=fixture\nIMAGE_VERSION=1.2.3\n"
    )
    (root / "efi" / "EFI" / "Linux" / "fixture_1.2.3+3-0.efi").write_bytes(b"old")
    result = tools_chroot.run(
        [
            "/usr/lib/systemd/systemd-sysupdate",
            "--definitions=/sysupdate.d",
            "--json=short",
            f"--root={root}",
            "list",
        ],
        # A directory bound onto itself stands in for the mounted ESP; systemd is told not to
        # insist on vfat.
        binds=[tmp_path, root / "efi"],
        env={"SYSTEMD_RELAX_ESP_CHECKS": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert b"Unknown key" not in result.stderr and b"Failed to" not in result.stderr
    listed = json.loads(result.text)
    assert listed["current"] == "1.2.3"
    assert listed["all"] == ["1.2.4", "1.2.3"]
