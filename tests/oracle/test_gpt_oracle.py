"""GPT against systemd-repart, sfdisk and systemd-dissect."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from ultraviolet.formats.gpt import (
    NewPartition,
    build_gpt,
    parse_gpt,
    root_hash_partition_uuids,
    type_uuid,
)
from ultraviolet.tools import ToolsChroot

from .conftest import RepartImage

pytestmark = pytest.mark.oracle


def _sfdisk(tools: ToolsChroot, image: Path) -> dict:  # type: ignore[type-arg]
    result = tools.run(["sfdisk", "-J", str(image)], binds=[image.parent])
    return json.loads(result.text)["partitiontable"]  # type: ignore[no-any-return]


def test_repart_image_matches_repart_and_sfdisk(
    repart_image: RepartImage, tools_chroot: ToolsChroot
) -> None:
    table = parse_gpt(repart_image.image.read_bytes())
    assert table.backup_error is None
    by_uuid = {p.uuid: p for p in table.partitions}
    for entry in repart_image.report:
        ours = by_uuid[uuid.UUID(entry["uuid"])]
        assert ours.type_uuid == type_uuid(*_split(entry["type"]))
        assert ours.start == entry["offset"]
        assert ours.size == entry["raw_size"]
        assert ours.label == entry["label"]
    sfdisk = _sfdisk(tools_chroot, repart_image.image)
    assert str(table.disk_guid) == sfdisk["id"].lower()
    expected = [
        (p["start"], p["size"], p["type"].lower(), p["uuid"].lower(), p.get("name", ""))
        for p in sfdisk["partitions"]
    ]
    got = [
        (p.first_lba, p.last_lba - p.first_lba + 1, str(p.type_uuid), str(p.uuid), p.label)
        for p in table.partitions
    ]
    assert got == expected
    home = next(p for p in table.partitions if p.type and p.type.name == "home")
    assert set(home.flags) == {"no-auto", "grow-fs"}


def _split(repart_type: str) -> tuple[str, str | None]:
    # repart names architecture-bound types "usr-x86-64-verity"; ours are ("usr-verity", "x86-64")
    for arch in ("x86-64", "arm64"):
        if f"-{arch}" in repart_type:
            return repart_type.replace(f"-{arch}", ""), arch
    return repart_type, None


def test_verity_partition_uuids_derive_from_root_hash(repart_image: RepartImage) -> None:
    table = parse_gpt(repart_image.image.read_bytes())
    usr = next(e for e in repart_image.report if e["type"].startswith("usr") and "roothash" in e)
    data_uuid, verity_uuid = root_hash_partition_uuids(bytes.fromhex(usr["roothash"]))
    names = {p.uuid: p.type.name for p in table.partitions if p.type}
    assert names[data_uuid] == "usr"
    assert names[verity_uuid] == "usr-verity"


def test_our_gpt_is_accepted_by_sfdisk(tools_chroot: ToolsChroot, tmp_path: Path) -> None:
    size = 64 << 20
    partitions = [
        NewPartition(type_uuid("esp"), uuid.uuid4(), 2048, 34815, label="esp"),
        NewPartition(type_uuid("usr", "x86-64"), uuid.uuid4(), 34816, 100351, 1 << 60, "uv_2.0"),
        NewPartition(type_uuid("home"), uuid.uuid4(), 100352, 110591, 1 << 63, "home"),
    ]
    layout = build_gpt(size, partitions, disk_guid=uuid.uuid4())
    image = tmp_path / "ours.raw"
    with image.open("wb") as handle:
        handle.truncate(size)
        handle.write(layout.primary)
        handle.seek(layout.backup_offset)
        handle.write(layout.backup)
    sfdisk = _sfdisk(tools_chroot, image)
    assert [
        (p["start"], p["size"], p["uuid"].lower(), p["name"]) for p in sfdisk["partitions"]
    ] == [(p.first_lba, p.last_lba - p.first_lba + 1, str(p.uuid), p.label) for p in partitions]
    verify = tools_chroot.run(["sfdisk", "--verify", str(image)], binds=[tmp_path], check=False)
    assert verify.returncode == 0, verify.stderr
    assert b"No errors detected" in verify.stdout


def test_our_writer_reproduces_repart_table_byte_for_byte(
    repart_image: RepartImage, tools_chroot: ToolsChroot, tmp_path: Path
) -> None:
    disk = repart_image.image.read_bytes()
    table = parse_gpt(disk)
    partitions = [
        NewPartition(p.type_uuid, p.uuid, p.first_lba, p.last_lba, p.attributes, p.label)
        for p in table.partitions
    ]
    layout = build_gpt(
        len(disk),
        partitions,
        disk_guid=table.disk_guid,
        sector_size=table.sector_size,
        entry_count=table.header.entry_count,
        first_usable_lba=table.header.first_usable_lba,
    )
    assert layout.primary == disk[: len(layout.primary)]
    assert layout.backup == disk[layout.backup_offset :]
    # The same partitions behind a table of ours with a new disk GUID: systemd-dissect finds
    # the signed verity /usr exactly as in repart's image.
    ours = tmp_path / "ours.raw"
    rewritten = bytearray(disk)
    layout = build_gpt(
        len(disk),
        partitions,
        disk_guid=uuid.uuid4(),
        first_usable_lba=table.header.first_usable_lba,
    )
    rewritten[: len(layout.primary)] = layout.primary
    rewritten[layout.backup_offset :] = layout.backup
    ours.write_bytes(rewritten)

    def mounts(image: Path) -> list[tuple[str, str, str | None]]:
        result = tools_chroot.run(
            ["systemd-dissect", "--json=short", str(image)], binds=[image.parent]
        )
        found = json.loads(result.text)["mounts"]
        return sorted((m["designator"], m["partition_uuid"], m["verity"]) for m in found)

    assert mounts(ours) == mounts(repart_image.image)
    assert ("usr", str(partitions[1].uuid), "signed") in mounts(ours)


def test_uvctl_inspect_agrees_with_repart(
    repart_image: RepartImage, capsys: pytest.CaptureFixture[str]
) -> None:
    from ultraviolet.cli import main

    assert main(["inspect", "--json", str(repart_image.image)]) == 0
    info = json.loads(capsys.readouterr().out)
    ours = {p["uuid"]: p for p in info["partitions"]}
    for entry in repart_image.report:
        partition = ours[entry["uuid"]]
        assert (partition["type"], partition["architecture"]) == _split(entry["type"])
        assert (partition["start"], partition["size"]) == (entry["offset"], entry["raw_size"])
        assert partition["label"] == entry["label"]
    usr = next(e for e in repart_image.report if e["type"] == "usr-x86-64")
    (verity,) = info["verity"]
    assert verity["root_hash"] == usr["roothash"]
    assert verity["data_matches_tree"] is True
