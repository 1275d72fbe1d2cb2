"""A read-only EROFS metadata reader: superblock, inodes, directories and extended attributes.

Enough to walk an erofs image (the usr partition) and see every file's mode, owner and xattrs
in place, without extracting it: the build's universal-truths check scans /usr with it. File
data is never read (regular files may be compressed; directories must not be).

On-disk layout (little endian), from the kernel's erofs documentation:
- superblock at byte 1024: magic 0xE0F5E1E2, crc32c of the rest of its block (when the
  SB_CHKSUM feature is set), block size as a shift, root directory nid, metadata and shared
  xattr block addresses;
- inode `nid` at meta_blkaddr * block_size + nid * 32: compact (32 bytes) or extended (64),
  followed by its inline xattrs (a 12-byte header, shared xattr ids, then entries) and, for the
  flat-inline layout, its last data block's bytes;
- directory blocks: an array of 12-byte dirents (nid, name offset, file type), then the names.
Every failure is an ErofsError with the byte offset (relative to `base`).
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ultraviolet.errors import FormatError
from ultraviolet.formats._reader import Bytes

MAGIC = 0xE0F5E1E2
SUPERBLOCK_OFFSET = 1024
FEATURE_COMPAT_SB_CHKSUM = 0x1
# Incompatible features that do not change where metadata lives (zero padding, compression
# configurations, chunked files, device table, tail packing, fragments/dedupe, xattr prefixes).
_KNOWN_INCOMPAT = 0x7F
LAYOUT_FLAT_PLAIN, LAYOUT_COMPRESSED_FULL, LAYOUT_FLAT_INLINE = 0, 1, 2
LAYOUT_COMPRESSED_COMPACT, LAYOUT_CHUNK_BASED = 3, 4
_SLOT = 32  # inodes are addressed in 32-byte slots
_NULL_BLOCK = 0xFFFFFFFF
_CHUNK_INDEXES = 0x20
_XATTR_PREFIXES = {1: "user.", 2: "system.posix_acl_access", 3: "system.posix_acl_default"}
_XATTR_PREFIXES |= {4: "trusted.", 5: "lustre.", 6: "security."}
_FILE_TYPES = {
    1: stat.S_IFREG,
    2: stat.S_IFDIR,
    3: stat.S_IFCHR,
    4: stat.S_IFBLK,
    5: stat.S_IFIFO,
    6: stat.S_IFSOCK,
    7: stat.S_IFLNK,
}
_MODE_TYPES = frozenset(_FILE_TYPES.values())
MAX_DEPTH = 256

_SUPER = struct.Struct("<IIIBBHQQIIII16s16sIHHHBBIQ")
_COMPACT = struct.Struct("<HHHHIIIIHHI")
_EXTENDED = struct.Struct("<HHHHQIIIIQII")
_DIRENT = struct.Struct("<QHBB")
_XATTR_ENTRY = struct.Struct("<BBH")


class ErofsError(FormatError):
    pass


@dataclass(frozen=True)
class ErofsSuperblock:
    block_size: int
    root_nid: int
    inode_count: int
    blocks: int
    meta_blkaddr: int
    xattr_blkaddr: int
    feature_compat: int
    feature_incompat: int
    uuid: bytes
    volume_name: str


@dataclass(frozen=True)
class ErofsInode:
    nid: int
    offset: int  # of the inode, relative to the image
    extended: bool
    layout: int
    mode: int
    uid: int
    gid: int
    nlink: int
    size: int
    union: int  # raw_blkaddr, rdev, compressed block count or chunk format, by layout and type
    xattr_size: int  # bytes of inline xattrs after the inode

    @property
    def end(self) -> int:
        """Where the inline xattrs start."""
        return self.offset + (64 if self.extended else 32)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def rdev(self) -> int:
        return self.union if stat.S_ISCHR(self.mode) or stat.S_ISBLK(self.mode) else 0


@dataclass(frozen=True)
class ErofsDirent:
    name: str
    nid: int
    file_type: int  # 0 unknown, 1 regular ... 7 symlink (erofs EROFS_FT_*)


@dataclass(frozen=True)
class ErofsXattr:
    name: str
    value: bytes


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return tuple(table)


_CRC32C = _crc32c_table()


def _raw_crc32c(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """CRC-32C without the final inversion, as the kernel's crc32c(~0, ...) returns it."""
    table = _CRC32C
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


class ErofsImage:
    """An erofs file system over bytes (a partition view of a mapped image is not copied)."""

    def __init__(self, data: Bytes, superblock: ErofsSuperblock, base: int) -> None:
        self.data = data
        self.superblock = superblock
        self.base = base

    @classmethod
    def parse(cls, data: Bytes, *, base: int = 0) -> ErofsImage:
        view = data if isinstance(data, bytes) else memoryview(data).cast("B")
        return cls(view, _parse_superblock(view, base), base)

    def _fail(self, structure: str, message: str, offset: int) -> ErofsError:
        return ErofsError(structure, message, self.base + offset)

    def _need(self, offset: int, size: int, structure: str) -> None:
        if offset < 0 or size < 0 or offset + size > len(self.data):
            left = max(0, len(self.data) - offset)
            raise self._fail(structure, f"truncated: need {size} bytes, {left} left", offset)

    def inode(self, nid: int) -> ErofsInode:
        block_size = self.superblock.block_size
        offset = self.superblock.meta_blkaddr * block_size + nid * _SLOT
        self._need(offset, 32, "erofs inode")
        (i_format,) = struct.unpack_from("<H", self.data, offset)
        if i_format >> 4:
            raise self._fail("erofs inode", f"unsupported i_format 0x{i_format:x}", offset)
        layout = (i_format >> 1) & 7
        if layout > LAYOUT_CHUNK_BASED:
            raise self._fail("erofs inode", f"unknown data layout {layout}", offset)
        if i_format & 1:
            self._need(offset, 64, "erofs extended inode")
            _, icount, mode, _, size, union, _, uid, gid, _, _, nlink = _EXTENDED.unpack_from(
                self.data, offset
            )
        else:
            _, icount, mode, nlink, size, _, union, _, uid, gid, _ = _COMPACT.unpack_from(
                self.data, offset
            )
        if stat.S_IFMT(mode) not in _MODE_TYPES:
            raise self._fail("erofs inode", f"mode 0o{mode:o} has no file type", offset + 4)
        xattr_size = 12 + 4 * (icount - 1) if icount else 0
        inode = ErofsInode(
            nid, offset, bool(i_format & 1), layout, mode, uid, gid, nlink, size, union, xattr_size
        )
        self._need(inode.end, xattr_size, "erofs inline xattrs")
        return inode

    @property
    def root(self) -> ErofsInode:
        return self.inode(self.superblock.root_nid)

    def xattrs(self, inode: ErofsInode) -> tuple[ErofsXattr, ...]:
        """The inode's extended attributes, shared ones first (as the kernel lists them)."""
        if not inode.xattr_size:
            return ()
        start, end = inode.end, inode.end + inode.xattr_size
        shared_count = self.data[start + 4]
        entries = start + 12 + 4 * shared_count
        if entries > end:
            raise self._fail("erofs xattr header", f"{shared_count} shared xattrs overflow", start)
        found = []
        shared_base = self.superblock.xattr_blkaddr * self.superblock.block_size
        for index in range(shared_count):
            (xattr_id,) = struct.unpack_from("<I", self.data, start + 12 + 4 * index)
            found.append(self._xattr_entry(shared_base + 4 * xattr_id, len(self.data))[0])
        while entries < end:
            xattr, entries = self._xattr_entry(entries, end)
            found.append(xattr)
        return tuple(found)

    def _xattr_entry(self, offset: int, limit: int) -> tuple[ErofsXattr, int]:
        self._need(offset, 4, "erofs xattr entry")
        name_length, name_index, value_size = _XATTR_ENTRY.unpack_from(self.data, offset)
        size = 4 + name_length + value_size
        following = offset + (size + 3) // 4 * 4
        if offset + size > limit:
            raise self._fail("erofs xattr entry", f"{size} bytes overrun the xattr area", offset)
        self._need(offset, size, "erofs xattr entry")
        prefix = _XATTR_PREFIXES.get(name_index)
        if prefix is None:
            problem = "long name prefixes are not supported" if name_index & 0x80 else "unknown"
            raise self._fail("erofs xattr entry", f"name index {name_index}: {problem}", offset)
        raw_name = bytes(self.data[offset + 4 : offset + 4 + name_length])
        value = bytes(self.data[offset + 4 + name_length : offset + size])
        name = prefix + raw_name.decode("utf-8", "surrogateescape")
        return ErofsXattr(name, value), min(following, limit)

    def _data_runs(self, inode: ErofsInode) -> Iterator[tuple[int, int]]:
        """(offset, length) runs holding the inode's data, in order."""
        block_size = self.superblock.block_size
        size = inode.size
        if size > len(self.data):
            raise self._fail("erofs inode", f"data size {size} exceeds the image", inode.offset)
        if inode.layout in (LAYOUT_COMPRESSED_FULL, LAYOUT_COMPRESSED_COMPACT):
            raise self._fail("erofs inode", "compressed data is not supported", inode.offset)
        if inode.layout == LAYOUT_CHUNK_BASED:
            yield from self._chunk_runs(inode)
            return
        blocks = -(-size // block_size)
        inline = inode.layout == LAYOUT_FLAT_INLINE and blocks > 0
        plain_length = (blocks - 1) * block_size if inline else size
        if plain_length:
            yield inode.union * block_size, plain_length
        if inline:
            tail = inode.end + inode.xattr_size
            tail_length = size - plain_length
            if tail % block_size + tail_length > block_size:
                raise self._fail("erofs inode", "inline data crosses a block boundary", tail)
            yield tail, tail_length

    def _chunk_runs(self, inode: ErofsInode) -> Iterator[tuple[int, int]]:
        block_size = self.superblock.block_size
        chunk_format = inode.union & 0xFFFF
        chunk_size = block_size << (chunk_format & 0x1F)
        indexes = bool(chunk_format & _CHUNK_INDEXES)
        unit = 8 if indexes else 4
        table = inode.end + inode.xattr_size
        table = (table + unit - 1) // unit * unit
        remaining = inode.size
        for chunk in range(-(-inode.size // chunk_size)):
            at = table + chunk * unit
            self._need(at, unit, "erofs chunk index")
            fmt = "<HHI" if indexes else "<I"
            block = struct.unpack_from(fmt, self.data, at)[-1]
            if indexes and struct.unpack_from("<H", self.data, at + 2)[0] != 0:
                raise self._fail("erofs chunk index", "data on an extra device", at)
            length = min(chunk_size, remaining)
            remaining -= length
            if block == _NULL_BLOCK:
                raise self._fail("erofs chunk index", "a directory with a hole", at)
            yield block * block_size, length

    def read_data(self, inode: ErofsInode) -> bytes:
        """The whole (uncompressed) data of an inode: meant for directories and symlinks."""
        parts = []
        for offset, length in self._data_runs(inode):
            self._need(offset, length, "erofs data")
            parts.append(bytes(self.data[offset : offset + length]))
        return b"".join(parts)

    def listdir(self, inode: ErofsInode) -> tuple[ErofsDirent, ...]:
        """The directory's entries except `.` and `..`, in on-disk (name) order."""
        if not inode.is_dir:
            raise self._fail("erofs directory", f"nid {inode.nid} is not a directory", inode.offset)
        block_size = self.superblock.block_size
        entries: list[ErofsDirent] = []
        for offset, length in self._data_runs(inode):
            self._need(offset, length, "erofs directory")
            for start in range(0, length, block_size):
                block = bytes(self.data[offset + start : offset + min(start + block_size, length)])
                entries.extend(self._dirents(block, offset + start))
        return tuple(entries)

    def _dirents(self, block: bytes, at: int) -> Iterator[ErofsDirent]:
        if len(block) < _DIRENT.size:
            raise self._fail("erofs directory block", f"{len(block)} bytes: no dirent", at)
        first_name = _DIRENT.unpack_from(block, 0)[1]
        if first_name % _DIRENT.size or not _DIRENT.size <= first_name < len(block):
            raise self._fail("erofs directory block", f"bad first name offset {first_name}", at)
        count = first_name // _DIRENT.size
        records = [_DIRENT.unpack_from(block, i * _DIRENT.size) for i in range(count)]
        for index, (nid, name_offset, file_type, _) in enumerate(records):
            where = at + index * _DIRENT.size
            last = index + 1 == count
            name_end = len(block) if last else records[index + 1][1]
            if not first_name <= name_offset < name_end <= len(block):
                raise self._fail("erofs dirent", f"bad name offset {name_offset}", where)
            raw = block[name_offset:name_end]
            if last:
                raw = raw.split(b"\0", 1)[0]
            if not raw or b"/" in raw or b"\0" in raw:
                raise self._fail("erofs dirent", f"bad name {raw!r}", where)
            if file_type > 7:
                raise self._fail("erofs dirent", f"unknown file type {file_type}", where)
            if raw not in (b".", b".."):
                yield ErofsDirent(raw.decode("utf-8", "surrogateescape"), nid, file_type)

    def walk(self) -> Iterator[tuple[str, ErofsInode]]:
        """Every inode below the root as (path relative to the root, inode), directories before
        their contents; each directory once (a directory reached twice is an error)."""
        seen = {self.superblock.root_nid}
        stack = [("", self.root, 0)]
        while stack:
            path, directory, depth = stack.pop()
            if depth > MAX_DEPTH:
                raise self._fail("erofs directory", f"deeper than {MAX_DEPTH}", directory.offset)
            for entry in reversed(self.listdir(directory)):
                child = self.inode(entry.nid)
                expected = _FILE_TYPES.get(entry.file_type)
                if expected is not None and stat.S_IFMT(child.mode) != expected:
                    raise self._fail(
                        "erofs dirent", f"{entry.name!r}: type differs from its inode", child.offset
                    )
                child_path = f"{path}/{entry.name}" if path else entry.name
                if child.is_dir:
                    if entry.nid in seen:
                        raise self._fail("erofs directory", "directory loop", child.offset)
                    seen.add(entry.nid)
                    stack.append((child_path, child, depth + 1))
                yield child_path, child


def _parse_superblock(data: Bytes, base: int) -> ErofsSuperblock:
    def fail(message: str, offset: int = SUPERBLOCK_OFFSET) -> ErofsError:
        return ErofsError("erofs superblock", message, base + offset)

    if len(data) < SUPERBLOCK_OFFSET + _SUPER.size:
        raise fail(f"truncated: {len(data)} bytes")
    fields = _SUPER.unpack_from(data, SUPERBLOCK_OFFSET)
    magic, checksum, compat, block_bits, _, root_nid, inodes, _, _, blocks = fields[:10]
    meta_blkaddr, xattr_blkaddr, uuid, volume_name, incompat = fields[10:15]
    directory_block_bits = fields[18]
    if magic != MAGIC:
        raise fail(f"bad magic 0x{magic:08x} (expected 0x{MAGIC:08x})")
    if not 9 <= block_bits <= 16:
        raise fail(f"block size 2^{block_bits} out of range", SUPERBLOCK_OFFSET + 12)
    block_size = 1 << block_bits
    if incompat & ~_KNOWN_INCOMPAT:
        raise fail(f"unsupported incompatible features 0x{incompat:x}", SUPERBLOCK_OFFSET + 80)
    if directory_block_bits:
        raise fail("directory blocks larger than the block size", SUPERBLOCK_OFFSET + 90)
    if compat & FEATURE_COMPAT_SB_CHKSUM:
        # The kernel checksums the rest of the superblock's block (a whole block when blocks
        # are no larger than the 1024-byte offset).
        covered = block_size - SUPERBLOCK_OFFSET if block_size > SUPERBLOCK_OFFSET else block_size
        end = SUPERBLOCK_OFFSET + covered
        if len(data) < end:
            raise fail(f"truncated: the superblock's block ends at {end}")
        block = bytearray(data[SUPERBLOCK_OFFSET:end])
        block[4:8] = bytes(4)
        computed = _raw_crc32c(bytes(block))
        if computed != checksum:
            raise fail(f"checksum 0x{checksum:08x}, computed 0x{computed:08x}", 1028)
    return ErofsSuperblock(
        block_size=block_size,
        root_nid=root_nid,
        inode_count=inodes,
        blocks=blocks,
        meta_blkaddr=meta_blkaddr,
        xattr_blkaddr=xattr_blkaddr,
        feature_compat=compat,
        feature_incompat=incompat,
        uuid=uuid,
        volume_name=volume_name.split(b"\0", 1)[0].decode("utf-8", "replace"),
    )
