"""A read-only FAT12/FAT16/FAT32 reader with VFAT long names, for ESPs inside disk images.

Follows Microsoft's FAT specification (fatgen103): the FAT type is decided by the count of data
clusters, never by labels. Cluster chains are bounds- and loop-checked; every failure is a
FatError with the byte offset (relative to `base`, the partition's offset in the image).
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ultraviolet.errors import FormatError
from ultraviolet.formats._reader import Bytes, Reader

ATTR_READ_ONLY, ATTR_HIDDEN, ATTR_SYSTEM, ATTR_VOLUME, ATTR_DIRECTORY = 1, 2, 4, 8, 0x10
ATTR_LONG_NAME = 0x0F
_ENTRY = struct.Struct("<11sBBBHHHHHHHI")
_LFN_ORDER_LAST = 0x40
_CASE_LOWER_BASE, _CASE_LOWER_EXT = 0x08, 0x10
MAX_DEPTH = 32


class FatError(FormatError):
    pass


@dataclass(frozen=True)
class FatEntry:
    name: str  # long name if present, else the short name as displayed
    short_name: str
    attributes: int
    first_cluster: int
    size: int
    offset: int  # of the 8.3 directory entry, relative to the volume

    @property
    def is_dir(self) -> bool:
        return bool(self.attributes & ATTR_DIRECTORY)


@dataclass(frozen=True)
class _Geometry:
    fat_type: int  # 12, 16 or 32
    bytes_per_sector: int
    sectors_per_cluster: int
    fat_offset: int
    root_offset: int  # FAT12/16 fixed root directory
    root_entries: int
    root_cluster: int  # FAT32
    data_offset: int
    cluster_count: int

    @property
    def cluster_size(self) -> int:
        return self.bytes_per_sector * self.sectors_per_cluster


def _geometry(reader: Reader) -> _Geometry:
    (bps,) = reader.unpack_at("<H", 11)
    (spc,) = reader.unpack_at("<B", 13)
    reserved, fats, root_entries, total16 = reader.unpack_at("<HBHH", 14)
    (fat16,) = reader.unpack_at("<H", 22)
    (total32,) = reader.unpack_at("<I", 32)
    if reader.bytes_at(510, 2) != b"\x55\xaa":
        reader.fail("missing boot sector signature 55 aa", 510)
    if bps not in (512, 1024, 2048, 4096):
        reader.fail(f"bytes per sector {bps} is not 512..4096", 11)
    if spc == 0 or spc & (spc - 1):
        reader.fail(f"sectors per cluster {spc} is not a power of two", 13)
    if reserved == 0 or fats == 0:
        reader.fail("no reserved sectors or no FAT", 14)
    fat_size = fat16 or reader.unpack_at("<I", 36)[0]
    total = total16 or total32
    root_sectors = (root_entries * 32 + bps - 1) // bps
    first_data = reserved + fats * fat_size + root_sectors
    if fat_size == 0 or total <= first_data:
        reader.fail(f"inconsistent sizes: {total} sectors, data starts at sector {first_data}", 19)
    clusters = (total - first_data) // spc
    fat_type = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
    root_cluster = reader.unpack_at("<I", 44)[0] if fat_type == 32 else 0
    reader.require(fat_size * bps, reserved * bps)
    return _Geometry(
        fat_type,
        bps,
        spc,
        reserved * bps,
        (reserved + fats * fat_size) * bps,
        root_entries,
        root_cluster,
        first_data * bps,
        clusters,
    )


def _short_name(raw: bytes, case: int) -> str:
    base, ext = raw[:8].rstrip(b" "), raw[8:].rstrip(b" ")
    if base[:1] == b"\x05":
        base = b"\xe5" + base[1:]
    name = base.decode("cp437")
    extension = ext.decode("cp437")
    if case & _CASE_LOWER_BASE:
        name = name.lower()
    if case & _CASE_LOWER_EXT:
        extension = extension.lower()
    return f"{name}.{extension}" if extension else name


def _lfn_checksum(raw: bytes) -> int:
    total = 0
    for byte in raw:
        total = (((total & 1) << 7) + (total >> 1) + byte) & 0xFF
    return total


def _lfn_chars(entry: bytes) -> bytes:
    return entry[1:11] + entry[14:26] + entry[28:32]


class FatVolume:
    """A FAT file system in `data` (a partition's bytes); `base` is its offset in the image."""

    def __init__(self, data: Bytes, geometry: _Geometry, base: int) -> None:
        self._data = data
        self._geometry = geometry
        self._reader = Reader(data, "FAT", FatError, base=base)

    @classmethod
    def parse(cls, data: Bytes, *, base: int = 0) -> FatVolume:
        return cls(data, _geometry(Reader(data, "FAT boot sector", FatError, base=base)), base)

    @property
    def fat_type(self) -> int:
        return self._geometry.fat_type

    def _next_cluster(self, cluster: int) -> int:
        g = self._geometry
        if g.fat_type == 12:
            (pair,) = self._reader.unpack_at("<H", g.fat_offset + cluster + cluster // 2)
            return pair >> 4 if cluster & 1 else pair & 0xFFF
        if g.fat_type == 16:
            return int(self._reader.unpack_at("<H", g.fat_offset + 2 * cluster)[0])
        return int(self._reader.unpack_at("<I", g.fat_offset + 4 * cluster)[0]) & 0x0FFFFFFF

    def _chain(self, first: int, at: int) -> Iterator[int]:
        g = self._geometry
        end_marker = {12: 0xFF8, 16: 0xFFF8, 32: 0x0FFFFFF8}[g.fat_type]
        cluster, seen = first, set[int]()
        while cluster < end_marker:
            if not 2 <= cluster < g.cluster_count + 2:
                self._reader.fail(f"cluster {cluster} out of range in chain from {first}", at)
            if cluster in seen:
                self._reader.fail(f"cluster chain from {first} loops at cluster {cluster}", at)
            seen.add(cluster)
            yield cluster
            cluster = self._next_cluster(cluster)

    def _cluster_bytes(self, cluster: int) -> bytes:
        g = self._geometry
        return self._reader.bytes_at(g.data_offset + (cluster - 2) * g.cluster_size, g.cluster_size)

    def _directory_records(self, cluster: int | None) -> Iterator[tuple[int, bytes]]:
        """(offset, 32-byte record) of a directory; None = the FAT12/16 root directory."""
        g = self._geometry
        if cluster is None and g.fat_type != 32:
            start = g.root_offset
            region = self._reader.bytes_at(start, g.root_entries * 32)
            for at in range(0, len(region), 32):
                yield start + at, region[at : at + 32]
            return
        first = g.root_cluster if cluster is None else cluster
        for number in self._chain(first, g.fat_offset):
            start = g.data_offset + (number - 2) * g.cluster_size
            block = self._cluster_bytes(number)
            for at in range(0, len(block), 32):
                yield start + at, block[at : at + 32]

    def _entries(self, cluster: int | None) -> Iterator[FatEntry]:
        long_parts: list[bytes] = []
        checksum = -1
        for offset, record in self._directory_records(cluster):
            if record[0] == 0:
                return
            if record[0] == 0xE5:
                long_parts = []
                continue
            if record[11] == ATTR_LONG_NAME:
                if record[0] & _LFN_ORDER_LAST:
                    long_parts, checksum = [], record[13]
                long_parts.insert(0, _lfn_chars(record))
                continue
            fields = _ENTRY.unpack(record)
            raw_name, attributes, case = fields[0], fields[1], fields[2]
            long_name = None
            if long_parts and checksum == _lfn_checksum(raw_name):
                long_name = self._decode_long_name(b"".join(long_parts), offset)
            long_parts = []
            if attributes & ATTR_VOLUME:
                continue
            short = _short_name(raw_name, case)
            if short in (".", ".."):
                continue
            first_cluster = (fields[7] << 16) | fields[10]
            yield FatEntry(long_name or short, short, attributes, first_cluster, fields[11], offset)

    def _decode_long_name(self, raw: bytes, offset: int) -> str:
        text = raw.decode("utf-16-le", errors="surrogatepass").split("\0", 1)[0]
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            self._reader.fail("long file name is not valid UTF-16", offset)
        return text

    def _lookup(self, path: str) -> FatEntry | None:
        """The entry at `path`; None for the root directory. Raises FatError if missing."""
        entry: FatEntry | None = None
        for part in (p for p in path.split("/") if p):
            cluster = entry.first_cluster if entry else None
            if entry is not None and not entry.is_dir:
                raise FatError("FAT path", f"{path!r}: {entry.name!r} is not a directory")
            wanted = part.upper()
            found = [
                e
                for e in self._entries(cluster or None)
                if e.name.upper() == wanted or e.short_name.upper() == wanted
            ]
            if not found:
                raise FatError("FAT path", f"{path!r}: no {part!r}")
            entry = found[0]
        return entry

    def exists(self, path: str) -> bool:
        try:
            self._lookup(path)
        except FatError as exc:
            if exc.offset is not None:
                raise
            return False
        return True

    def listdir(self, path: str = "") -> tuple[FatEntry, ...]:
        entry = self._lookup(path)
        if entry is not None and not entry.is_dir:
            raise FatError("FAT path", f"{path!r} is not a directory")
        return tuple(self._entries(entry.first_cluster or None if entry else None))

    def read_file(self, path: str) -> bytes:
        entry = self._lookup(path)
        if entry is None or entry.is_dir:
            raise FatError("FAT path", f"{path!r} is not a file")
        if entry.size == 0:
            return b""
        size = self._geometry.cluster_size
        needed = -(-entry.size // size)
        clusters = list(itertools.islice(self._chain(entry.first_cluster, entry.offset), needed))
        if len(clusters) < needed:
            self._reader.fail(f"{path!r}: cluster chain shorter than the file size", entry.offset)
        return b"".join(self._runs(clusters))[: entry.size]

    def file_offset(self, path: str, position: int) -> int:
        """Where byte `position` of the file at `path` lies, relative to the volume (to patch a
        file in place in a disk image, as the tamper tests do)."""
        entry = self._lookup(path)
        if entry is None or entry.is_dir:
            raise FatError("FAT path", f"{path!r} is not a file")
        if not 0 <= position < entry.size:
            raise FatError("FAT path", f"{path!r} has {entry.size} bytes, no byte {position}")
        size = self._geometry.cluster_size
        index = position // size
        chain = itertools.islice(self._chain(entry.first_cluster, entry.offset), index, index + 1)
        cluster = next(chain, None)
        if cluster is None:
            self._reader.fail(f"{path!r}: cluster chain shorter than the file size", entry.offset)
        return self._geometry.data_offset + (cluster - 2) * size + position % size

    def _runs(self, clusters: list[int]) -> Iterator[bytes]:
        """The bytes of `clusters`, one slice per run of consecutive clusters (fast for big
        files, which FAT tools allocate contiguously)."""
        g = self._geometry
        start = 0
        for index in range(1, len(clusters) + 1):
            if index == len(clusters) or clusters[index] != clusters[index - 1] + 1:
                first = g.data_offset + (clusters[start] - 2) * g.cluster_size
                yield self._reader.bytes_at(first, (index - start) * g.cluster_size)
                start = index

    def walk(self, path: str = "", *, _depth: int = 0) -> Iterator[tuple[str, FatEntry]]:
        if _depth > MAX_DEPTH:  # a directory chain pointing back at an ancestor
            raise FatError("FAT path", f"{path!r}: directories nested deeper than {MAX_DEPTH}")
        for entry in self.listdir(path):
            child = f"{path}/{entry.name}" if path else entry.name
            yield child, entry
            if entry.is_dir:
                yield from self.walk(child, _depth=_depth + 1)
