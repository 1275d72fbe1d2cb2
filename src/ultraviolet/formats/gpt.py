"""GUID Partition Tables: read and write, byte-exact; Discoverable Partitions Spec types.

Layout (UEFI 2.10 §5.3): protective MBR at LBA 0, primary header at LBA 1 (92 bytes, CRC32 over
the header with its CRC field zeroed), entries (usually 128 x 128 bytes) right after, and the
backup entries + backup header at the end of the disk. GUIDs are stored mixed-endian, which is
what uuid.UUID(bytes_le=...) reads.
"""

from __future__ import annotations

import itertools
import struct
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from ultraviolet.errors import FormatError
from ultraviolet.formats._reader import Bytes, Reader

SIGNATURE = b"EFI PART"
REVISION = 0x00010000
HEADER_SIZE = 92
ENTRY_SIZE = 128
DEFAULT_ENTRY_COUNT = 128
MAX_ENTRIES_BYTES = 1 << 20  # far above any real table; bounds hostile entry counts
LABEL_UNITS = 36  # 72 bytes of UTF-16LE
_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
_ENTRY = struct.Struct("<16s16sQQQ72s")

FLAGS = {
    0: "required",
    1: "no-block-io",
    2: "legacy-bootable",
    59: "grow-fs",
    60: "read-only",
    63: "no-auto",
}


class GptError(FormatError):
    pass


@dataclass(frozen=True)
class PartitionType:
    name: str
    arch: str | None
    uuid: uuid.UUID

    def __str__(self) -> str:
        return f"{self.name} ({self.arch})" if self.arch else self.name


# From the Discoverable Partitions Specification (uapi-group/specifications).
_ARCH_TYPES: dict[str, tuple[str, str, str, str, str, str]] = {
    # arch: root, usr, root-verity, usr-verity, root-verity-sig, usr-verity-sig
    "x86-64": (
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
        "8484680c-9521-48c6-9c11-b0720656f69e",
        "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5",
        "77ff5f63-e7b6-4633-acf4-1565b864c0e6",
        "41092b05-9fc8-4523-994f-2def0408b176",
        "e7bb33fb-06cf-4e81-8273-e543b413e2e2",
    ),
    "arm64": (
        "b921b045-1df0-41c3-af44-4c6f280d3fae",
        "b0e01050-ee5f-4390-949a-9101b17104e9",
        "df3300ce-d69f-4c92-978c-9bfb0f38d820",
        "6e11a4e7-fbca-4ded-b9e9-e1a512bb664e",
        "6db69de6-29f4-4758-a7a5-962190f00ce3",
        "c23ce4ff-44bd-4b00-b2d4-b41b3419e02a",
    ),
    "x86": (
        "44479540-f297-41b2-9af7-d131d5f0458a",
        "75250d76-8cc6-458e-bd66-bd47cc81a812",
        "d13c5d3b-b5d1-422a-b29f-9454fdc89d76",
        "8f461b0d-14ee-4e81-9aa9-049b6fb97abd",
        "5996fc05-109c-48de-808b-23fa0830b676",
        "974a71c0-de41-43c3-be5d-5c5ccd1ad2c0",
    ),
    "riscv64": (
        "72ec70a6-cf74-40e6-bd49-4bda08e8f224",
        "beaec34b-8442-439b-a40b-984381ed097d",
        "b6ed5582-440b-4209-b8da-5ff7c419ea3d",
        "8f1056be-9b05-47c4-81d6-be53128e5b54",
        "efe0f087-ea8d-4469-821a-4c2a96a8386a",
        "d2f9000a-7a18-453f-b5cd-4d32f77a7b32",
    ),
}
_ARCH_TYPE_NAMES = ("root", "usr", "root-verity", "usr-verity", "root-verity-sig", "usr-verity-sig")
_GENERIC_TYPES = {
    "esp": "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
    "xbootldr": "bc13c2ff-59e6-4262-a352-b275fd6f7172",
    "swap": "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f",
    "home": "933ac7e1-2eb4-4f13-b844-0e14e2aef915",
    "srv": "3b8f8425-20e0-4f3b-907f-1a25a76f98e8",
    "var": "4d21b016-b534-45c2-a9fb-5c16e091fd2d",
    "tmp": "7ec6f557-3bc5-4aca-b293-16ef5df639d1",
    "user-home": "773f91ef-66d4-49b5-bd83-d683bf40ad16",
    "linux-generic": "0fc63daf-8483-4772-8e79-3d69d8477de4",
}


def _build_type_table() -> dict[uuid.UUID, PartitionType]:
    table: dict[uuid.UUID, PartitionType] = {}
    for name, text in _GENERIC_TYPES.items():
        table[uuid.UUID(text)] = PartitionType(name, None, uuid.UUID(text))
    for arch, uuids in _ARCH_TYPES.items():
        for name, text in zip(_ARCH_TYPE_NAMES, uuids, strict=True):
            table[uuid.UUID(text)] = PartitionType(name, arch, uuid.UUID(text))
    return table


PARTITION_TYPES: dict[uuid.UUID, PartitionType] = _build_type_table()


def lookup_type(type_uuid: uuid.UUID) -> PartitionType | None:
    return PARTITION_TYPES.get(type_uuid)


def type_uuid(name: str, arch: str | None = None) -> uuid.UUID:
    """The DPS type UUID of `name` (e.g. "usr-verity") for `arch` (needed for root/usr types)."""
    for kind in PARTITION_TYPES.values():
        if kind.name == name and kind.arch == (arch if kind.arch else None):
            return kind.uuid
    known = sorted({k.name for k in PARTITION_TYPES.values()})
    raise GptError(
        "partition type",
        f"unknown type {name!r} for architecture {arch!r}; types: {', '.join(known)}; "
        f"architectures: {', '.join(_ARCH_TYPES)}",
    )


def decode_flags(attributes: int) -> tuple[str, ...]:
    return tuple(name for bit, name in sorted(FLAGS.items()) if attributes >> bit & 1)


def root_hash_partition_uuids(root_hash: bytes) -> tuple[uuid.UUID, uuid.UUID]:
    """(data, verity) partition UUIDs: the first and last 128 bits of a verity root hash."""
    if len(root_hash) < 32:
        raise GptError("root hash", f"need at least 32 bytes, got {len(root_hash)}")
    return uuid.UUID(bytes=root_hash[:16]), uuid.UUID(bytes=root_hash[-16:])


@dataclass(frozen=True)
class GptPartition:
    number: int  # 1-based slot index in the entry array
    type_uuid: uuid.UUID
    uuid: uuid.UUID
    first_lba: int
    last_lba: int
    attributes: int
    label: str
    sector_size: int

    @property
    def start(self) -> int:
        return self.first_lba * self.sector_size

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * self.sector_size

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def type(self) -> PartitionType | None:
        return lookup_type(self.type_uuid)

    @property
    def flags(self) -> tuple[str, ...]:
        return decode_flags(self.attributes)


@dataclass(frozen=True)
class GptHeader:
    revision: int
    header_size: int
    header_crc32: int
    my_lba: int
    alternate_lba: int
    first_usable_lba: int
    last_usable_lba: int
    disk_guid: uuid.UUID
    entries_lba: int
    entry_count: int
    entry_size: int
    entries_crc32: int

    def to_bytes(self) -> bytes:
        """The 92-byte header exactly as stored (CRC field as recorded)."""
        return _HEADER.pack(
            SIGNATURE,
            self.revision,
            self.header_size,
            self.header_crc32,
            0,
            self.my_lba,
            self.alternate_lba,
            self.first_usable_lba,
            self.last_usable_lba,
            self.disk_guid.bytes_le,
            self.entries_lba,
            self.entry_count,
            self.entry_size,
            self.entries_crc32,
        )


@dataclass(frozen=True)
class GptTable:
    sector_size: int
    disk_guid: uuid.UUID
    header: GptHeader
    partitions: tuple[GptPartition, ...]
    backup_error: str | None
    entries: bytes  # the raw entry array, so that writing back is byte-exact

    def partition(self, number: int) -> GptPartition | None:
        return next((p for p in self.partitions if p.number == number), None)


def _crc32(data: Bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def _detect_sector_size(disk: Bytes) -> int:
    for size in (512, 4096):
        if bytes(disk[size : size + 8]) == SIGNATURE:
            return size
    raise GptError(
        "GPT header", "no 'EFI PART' signature at LBA 1 (512- or 4096-byte sectors)", 512
    )


def _check_protective_mbr(disk: Bytes) -> None:
    reader = Reader(disk, "protective MBR", GptError)
    if reader.bytes_at(510, 2) != b"\x55\xaa":
        reader.fail("missing boot signature 55 aa", 510)
    types = [reader.unpack_at("<B", 446 + 16 * i + 4)[0] for i in range(4)]
    if 0xEE not in types:
        reader.fail("no partition record of type 0xEE (GPT protective)", 446)


def _parse_header(disk: Bytes, lba: int, sector_size: int, what: str) -> GptHeader:
    offset = lba * sector_size
    reader = Reader(disk, what, GptError)
    raw = reader.bytes_at(offset, HEADER_SIZE)
    fields = _HEADER.unpack(raw)
    if fields[0] != SIGNATURE:
        reader.fail("no 'EFI PART' signature", offset)
    (
        _,
        revision,
        header_size,
        header_crc,
        _,
        my_lba,
        alternate_lba,
        first_usable,
        last_usable,
        guid,
        entries_lba,
        entry_count,
        entry_size,
        entries_crc,
    ) = fields
    header = GptHeader(
        revision,
        header_size,
        header_crc,
        my_lba,
        alternate_lba,
        first_usable,
        last_usable,
        uuid.UUID(bytes_le=guid),
        entries_lba,
        entry_count,
        entry_size,
        entries_crc,
    )
    if not HEADER_SIZE <= header.header_size <= sector_size:
        reader.fail(
            f"header size {header.header_size} outside {HEADER_SIZE}..{sector_size}", offset + 12
        )
    full = reader.bytes_at(offset, header.header_size)
    zeroed = full[:16] + b"\0\0\0\0" + full[20:]
    if _crc32(zeroed) != header.header_crc32:
        reader.fail(
            f"header CRC32 mismatch (stored {header.header_crc32:08x}, "
            f"computed {_crc32(zeroed):08x})",
            offset + 16,
        )
    if header.my_lba != lba:
        reader.fail(f"header says it is at LBA {header.my_lba}, found at LBA {lba}", offset + 24)
    if header.entry_size < ENTRY_SIZE or header.entry_size % 8:
        reader.fail(f"entry size {header.entry_size} is not a multiple of 8 >= 128", offset + 84)
    if header.entry_count * header.entry_size > MAX_ENTRIES_BYTES:
        reader.fail(
            f"{header.entry_count} entries of {header.entry_size} bytes is implausible", offset + 80
        )
    return header


def _read_entries(disk: Bytes, header: GptHeader, sector_size: int, what: str) -> bytes:
    offset = header.entries_lba * sector_size
    reader = Reader(disk, what, GptError)
    entries = reader.bytes_at(offset, header.entry_count * header.entry_size)
    if _crc32(entries) != header.entries_crc32:
        reader.fail(
            f"entries CRC32 mismatch (stored {header.entries_crc32:08x}, "
            f"computed {_crc32(entries):08x})",
            offset,
        )
    return entries


def _decode_label(raw: bytes, offset: int) -> str:
    units = raw.decode("utf-16-le", errors="surrogatepass")
    label = units.split("\0", 1)[0]
    try:
        label.encode("utf-8")
    except UnicodeEncodeError:
        raise GptError("GPT entry", "partition name is not valid UTF-16", offset + 56) from None
    return label


def _parse_partitions(
    entries: bytes, header: GptHeader, sector_size: int, base: int
) -> tuple[GptPartition, ...]:
    partitions = []
    for index in range(header.entry_count):
        at = index * header.entry_size
        type_raw, unique_raw, first, last, attributes, name = _ENTRY.unpack_from(entries, at)
        if type_raw == bytes(16):
            continue
        where = base + at
        if first > last or first < header.first_usable_lba or last > header.last_usable_lba:
            raise GptError(
                "GPT entry",
                f"partition {index + 1} spans LBA {first}..{last}, "
                f"outside the usable {header.first_usable_lba}.."
                f"{header.last_usable_lba}",
                where + 32,
            )
        partitions.append(
            GptPartition(
                index + 1,
                uuid.UUID(bytes_le=type_raw),
                uuid.UUID(bytes_le=unique_raw),
                first,
                last,
                attributes,
                _decode_label(name, where),
                sector_size,
            )
        )
    _check_overlaps(partitions, base, header.entry_size)
    return tuple(partitions)


def _first_overlap(spans: Sequence[tuple[int, int, int]]) -> tuple[int, int] | None:
    """The ids of two overlapping (first_lba, last_lba, id) spans, if any."""
    ordered = sorted(spans)
    for left, right in itertools.pairwise(ordered):
        if right[0] <= left[1]:
            return left[2], right[2]
    return None


def _check_overlaps(partitions: list[GptPartition], base: int, entry_size: int) -> None:
    clash = _first_overlap([(p.first_lba, p.last_lba, p.number) for p in partitions])
    if clash:
        raise GptError(
            "GPT entry",
            f"partitions {clash[0]} and {clash[1]} overlap",
            base + (clash[1] - 1) * entry_size + 32,
        )


def parse_gpt(disk: Bytes) -> GptTable:
    """Parse the GPT of a whole disk image; the backup is checked but only reported."""
    sector_size = _detect_sector_size(disk)
    _check_protective_mbr(disk)
    header = _parse_header(disk, 1, sector_size, "GPT header")
    entries = _read_entries(disk, header, sector_size, "GPT entries")
    partitions = _parse_partitions(entries, header, sector_size, header.entries_lba * sector_size)
    return GptTable(
        sector_size,
        header.disk_guid,
        header,
        partitions,
        _backup_problem(disk, header, entries, sector_size),
        entries,
    )


def _backup_problem(
    disk: Bytes, primary: GptHeader, entries: bytes, sector_size: int
) -> str | None:
    last_lba = len(disk) // sector_size - 1
    if primary.alternate_lba != last_lba:
        return (
            f"primary header puts the backup at LBA {primary.alternate_lba}, "
            f"the disk ends at LBA {last_lba}"
        )
    try:
        backup = _parse_header(disk, primary.alternate_lba, sector_size, "backup GPT header")
        backup_entries = _read_entries(disk, backup, sector_size, "backup GPT entries")
    except GptError as exc:
        return str(exc)
    expected = (
        primary.alternate_lba,
        primary.my_lba,
        primary.first_usable_lba,
        primary.last_usable_lba,
        primary.disk_guid,
        primary.entry_count,
        primary.entry_size,
    )
    found = (
        backup.my_lba,
        backup.alternate_lba,
        backup.first_usable_lba,
        backup.last_usable_lba,
        backup.disk_guid,
        backup.entry_count,
        backup.entry_size,
    )
    if expected != found:
        return "backup header fields do not mirror the primary header"
    if backup_entries != entries:
        return "backup partition entries differ from the primary entries"
    return None


# --- writing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewPartition:
    type_uuid: uuid.UUID
    uuid: uuid.UUID
    first_lba: int
    last_lba: int
    attributes: int = 0
    label: str = ""


@dataclass(frozen=True)
class GptLayout:
    """What to write: `primary` at offset 0 (PMBR, header, entries), `backup` at its offset."""

    primary: bytes
    backup: bytes
    backup_offset: int
    disk_size: int


def protective_mbr(disk_size: int, sector_size: int) -> bytes:
    sectors = disk_size // sector_size - 1
    record = struct.pack(
        "<B3sB3sII", 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1, min(sectors, 0xFFFFFFFF)
    )
    return bytes(446) + record + bytes(48) + b"\x55\xaa" + bytes(sector_size - 512)


def _encode_entry(partition: NewPartition | GptPartition) -> bytes:
    name = partition.label.encode("utf-16-le")
    return _ENTRY.pack(
        partition.type_uuid.bytes_le,
        partition.uuid.bytes_le,
        partition.first_lba,
        partition.last_lba,
        partition.attributes,
        name.ljust(72, b"\0"),
    )


def _with_crc(header: GptHeader) -> GptHeader:
    raw = GptHeader(**{**header.__dict__, "header_crc32": 0}).to_bytes()
    return GptHeader(**{**header.__dict__, "header_crc32": _crc32(raw)})


def _layout(header: GptHeader, entries: bytes, disk_size: int, sector_size: int) -> GptLayout:
    entries_sectors = -(-len(entries) // sector_size)
    padded_entries = entries.ljust(entries_sectors * sector_size, b"\0")
    backup = GptHeader(
        **{
            **header.__dict__,
            "my_lba": header.alternate_lba,
            "alternate_lba": header.my_lba,
            "entries_lba": header.alternate_lba - entries_sectors,
        }
    )
    backup = _with_crc(backup)

    def sector(h: GptHeader) -> bytes:
        return h.to_bytes().ljust(sector_size, b"\0")

    primary = protective_mbr(disk_size, sector_size) + sector(header) + padded_entries
    backup_bytes = padded_entries + sector(backup)
    return GptLayout(primary, backup_bytes, backup.entries_lba * sector_size, disk_size)


def _validate_new(partitions: Sequence[NewPartition], first: int, last: int) -> None:
    for index, partition in enumerate(partitions, start=1):
        if not first <= partition.first_lba <= partition.last_lba <= last:
            raise GptError(
                "new GPT",
                f"partition {index} (LBA {partition.first_lba}.."
                f"{partition.last_lba}) is outside the usable {first}..{last}",
            )
        if len(partition.label.encode("utf-16-le")) > 2 * LABEL_UNITS:
            raise GptError("new GPT", f"partition {index}: label longer than 36 UTF-16 units")
        if partition.attributes >> 64:
            raise GptError("new GPT", f"partition {index}: attributes do not fit 64 bits")
    clash = _first_overlap([(p.first_lba, p.last_lba, i) for i, p in enumerate(partitions, 1)])
    if clash:
        raise GptError("new GPT", f"partitions {clash[0]} and {clash[1]} overlap")


def build_gpt(
    disk_size: int,
    partitions: Sequence[NewPartition],
    *,
    disk_guid: uuid.UUID,
    sector_size: int = 512,
    entry_count: int = DEFAULT_ENTRY_COUNT,
    first_usable_lba: int | None = None,
) -> GptLayout:
    """A new GPT for a disk of `disk_size` bytes holding `partitions` in slots 1, 2, ...

    `first_usable_lba` defaults to right after the entries; partitioners such as sfdisk and
    systemd-repart put it at 1 MiB (LBA 2048) for alignment.
    """
    if sector_size not in (512, 4096) or disk_size % sector_size:
        raise GptError("new GPT", f"disk size {disk_size} is not a multiple of {sector_size}")
    if not len(partitions) <= entry_count <= MAX_ENTRIES_BYTES // ENTRY_SIZE:
        raise GptError("new GPT", f"{len(partitions)} partitions do not fit {entry_count} slots")
    entries_sectors = -(-entry_count * ENTRY_SIZE // sector_size)
    last_lba = disk_size // sector_size - 1
    first_usable, last_usable = 2 + entries_sectors, last_lba - 1 - entries_sectors
    if first_usable_lba is not None:
        if first_usable_lba < first_usable:
            raise GptError("new GPT", f"first usable LBA {first_usable_lba} overlaps the entries")
        first_usable = first_usable_lba
    if last_usable < first_usable:
        raise GptError("new GPT", f"a disk of {disk_size} bytes has no room for partitions")
    _validate_new(partitions, first_usable, last_usable)
    entries = b"".join(_encode_entry(p) for p in partitions).ljust(entry_count * ENTRY_SIZE, b"\0")
    header = _with_crc(
        GptHeader(
            REVISION,
            HEADER_SIZE,
            0,
            1,
            last_lba,
            first_usable,
            last_usable,
            disk_guid,
            2,
            entry_count,
            ENTRY_SIZE,
            _crc32(entries),
        )
    )
    return _layout(header, entries, disk_size, sector_size)


def serialize_gpt(table: GptTable, disk_size: int) -> GptLayout:
    """Write a parsed table back: headers (as stored, CRCs included) and the raw entry array."""
    return _layout(table.header, table.entries, disk_size, table.sector_size)
