"""GPT: parse/write round trips, DPS types, corrupt input -> GptError with offsets."""

from __future__ import annotations

import contextlib
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ultraviolet.formats.gpt import (
    GptError,
    NewPartition,
    build_gpt,
    decode_flags,
    lookup_type,
    parse_gpt,
    root_hash_partition_uuids,
    serialize_gpt,
    type_uuid,
)

DISK_GUID = uuid.UUID("6ffceae1-d4c6-4802-b7f6-4e5de3fb88b2")
MIB = 1 << 20


def _image(size: int, partitions: list[NewPartition], sector_size: int = 512) -> bytearray:
    layout = build_gpt(size, partitions, disk_guid=DISK_GUID, sector_size=sector_size)
    disk = bytearray(size)
    disk[: len(layout.primary)] = layout.primary
    disk[layout.backup_offset :] = layout.backup
    return disk


def _partitions(sector_size: int = 512) -> list[NewPartition]:
    per_mib = MIB // sector_size
    return [
        NewPartition(type_uuid("esp"), uuid.uuid4(), per_mib, 3 * per_mib - 1, label="esp"),
        NewPartition(
            type_uuid("usr", "x86-64"),
            uuid.uuid4(),
            3 * per_mib,
            5 * per_mib - 1,
            attributes=1 << 60,
            label="uv_1.2.3",
        ),
    ]


def test_dps_types() -> None:
    assert type_uuid("usr", "x86-64") == uuid.UUID("8484680c-9521-48c6-9c11-b0720656f69e")
    assert type_uuid("esp") == uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
    kind = lookup_type(uuid.UUID("e7bb33fb-06cf-4e81-8273-e543b413e2e2"))
    assert kind is not None and (kind.name, kind.arch) == ("usr-verity-sig", "x86-64")
    assert lookup_type(type_uuid("root-verity", "arm64")).arch == "arm64"  # type: ignore[union-attr]
    with pytest.raises(GptError, match="unknown type"):
        type_uuid("usr", "vax")


def test_flags() -> None:
    assert decode_flags((1 << 60) | (1 << 63) | 1) == ("required", "read-only", "no-auto")
    assert decode_flags(1 << 59) == ("grow-fs",)


def test_root_hash_uuids_follow_repart() -> None:
    # The example checked against systemd-repart 257 in FORMATS.md.
    root_hash = bytes.fromhex(
        "e5ef880ce59864d761af225a9f64c8de" + "c0c0a5c8f8ccf5ea761d9d746d58b551"
    )
    data, verity = root_hash_partition_uuids(root_hash)
    assert str(data) == "e5ef880c-e598-64d7-61af-225a9f64c8de"
    assert str(verity) == "c0c0a5c8-f8cc-f5ea-761d-9d746d58b551"


@pytest.mark.parametrize("sector_size", [512, 4096])
def test_round_trip(sector_size: int) -> None:
    partitions = _partitions(sector_size)
    disk = _image(8 * MIB, partitions, sector_size)
    table = parse_gpt(disk)
    assert table.sector_size == sector_size
    assert table.disk_guid == DISK_GUID
    assert table.backup_error is None
    assert [(p.type_uuid, p.uuid, p.label) for p in table.partitions] == [
        (p.type_uuid, p.uuid, p.label) for p in partitions
    ]
    usr = table.partitions[1]
    assert usr.start == 3 * MIB and usr.size == 2 * MIB
    assert usr.flags == ("read-only",)
    assert usr.type is not None and usr.type.name == "usr"
    layout = serialize_gpt(table, len(disk))
    assert bytes(disk[: len(layout.primary)]) == layout.primary
    assert bytes(disk[layout.backup_offset :]) == layout.backup


def test_header_corruption_names_offset() -> None:
    disk = _image(4 * MIB, _partitions()[:1])
    disk[512 + 60] ^= 1  # inside the disk GUID
    with pytest.raises(GptError, match="header CRC32 mismatch") as caught:
        parse_gpt(disk)
    assert caught.value.offset == 512 + 16


def test_entry_corruption_names_offset() -> None:
    disk = _image(4 * MIB, _partitions()[:1])
    disk[1024 + 40] ^= 1
    with pytest.raises(GptError, match="entries CRC32 mismatch") as caught:
        parse_gpt(disk)
    assert caught.value.offset == 1024


def test_backup_problems_are_reported_not_raised() -> None:
    disk = _image(4 * MIB, _partitions()[:1])
    disk[-512 + 60] ^= 1
    assert "backup GPT header" in (parse_gpt(disk).backup_error or "")
    truncated = disk[:-4096]
    assert "disk ends at LBA" in (parse_gpt(truncated).backup_error or "")


def test_missing_protective_mbr() -> None:
    disk = _image(4 * MIB, [])
    disk[510] = 0
    with pytest.raises(GptError, match="boot signature") as caught:
        parse_gpt(disk)
    assert caught.value.offset == 510


def test_writer_rejects_overlaps_and_out_of_range() -> None:
    first, second = _partitions()
    clash = NewPartition(second.type_uuid, second.uuid, first.last_lba, second.last_lba)
    with pytest.raises(GptError, match="overlap"):
        build_gpt(8 * MIB, [first, clash], disk_guid=DISK_GUID)
    with pytest.raises(GptError, match="outside the usable"):
        build_gpt(
            4 * MIB, [NewPartition(first.type_uuid, first.uuid, 2048, 9000)], disk_guid=DISK_GUID
        )
    with pytest.raises(GptError, match="label longer"):
        build_gpt(
            8 * MIB,
            [NewPartition(first.type_uuid, first.uuid, 2048, 4000, label="x" * 37)],
            disk_guid=DISK_GUID,
        )


def test_unicode_labels_round_trip() -> None:
    partition = NewPartition(type_uuid("home"), uuid.uuid4(), 2048, 4095, label="hôme-ü")
    assert parse_gpt(_image(4 * MIB, [partition])).partitions[0].label == "hôme-ü"


BASE_IMAGE = bytes(_image(1 * MIB, [NewPartition(type_uuid("esp"), uuid.UUID(int=1), 40, 100)]))


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.integers(0, 34 * 512 - 1), st.integers(0, 255)), min_size=1, max_size=8)
)
def test_mutations_raise_only_gpt_error(mutations: list[tuple[int, int]]) -> None:
    disk = bytearray(BASE_IMAGE)
    for offset, value in mutations:
        disk[offset] = value
    try:
        table = parse_gpt(disk)
    except GptError:
        return
    for partition in table.partitions:
        assert partition.first_lba <= partition.last_lba


@given(st.binary(max_size=5000))
def test_random_bytes_raise_only_gpt_error(data: bytes) -> None:
    with contextlib.suppress(GptError):
        parse_gpt(data)
