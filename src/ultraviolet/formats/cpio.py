"""newc ("070701") cpio archives, as the kernel unpacks initramfs (Documentation/driver-api/
early-userspace/buffer-format.rst): write and read. Archives may be concatenated; the kernel
unpacks each in turn, skipping NUL padding between them.
"""

from __future__ import annotations

import stat
from collections.abc import Sequence
from dataclasses import dataclass

from ultraviolet.errors import FormatError
from ultraviolet.formats._reader import Bytes

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_HEADER_SIZE = 110


class CpioError(FormatError):
    pass


@dataclass(frozen=True)
class CpioEntry:
    path: str  # relative, no leading slash
    mode: int  # including the file type bits
    data: bytes = b""  # file contents, or the symlink target

    @classmethod
    def directory(cls, path: str, permissions: int = 0o755) -> CpioEntry:
        return cls(path, stat.S_IFDIR | permissions)

    @classmethod
    def file(cls, path: str, data: bytes, permissions: int = 0o644) -> CpioEntry:
        return cls(path, stat.S_IFREG | permissions, data)

    @classmethod
    def symlink(cls, path: str, target: str) -> CpioEntry:
        return cls(path, stat.S_IFLNK | 0o777, target.encode())


def _pad4(data: bytearray) -> None:
    data.extend(bytes(-len(data) % 4))


def _header(inode: int, mode: int, size: int, name_size: int, nlink: int) -> bytes:
    # ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
    fields = (inode, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, name_size, 0)
    return MAGIC + b"".join(b"%08X" % value for value in fields)


def write_cpio(entries: Sequence[CpioEntry]) -> bytes:
    """A reproducible archive: owner root, mtime 0, inodes numbered in order."""
    out = bytearray()
    for inode, entry in enumerate([*entries, CpioEntry(TRAILER, 0)], start=1):
        if entry.path.startswith("/") or not entry.path:
            raise CpioError("cpio entry", f"path {entry.path!r} must be relative and non-empty")
        name = entry.path.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        trailer = entry.path == TRAILER
        out += _header(
            0 if trailer else inode, entry.mode, len(entry.data), len(name), 0 if trailer else nlink
        )
        out += name
        _pad4(out)
        out += entry.data
        _pad4(out)
    return bytes(out)


def read_cpio(data: Bytes) -> list[CpioEntry]:
    """The entries of one newc archive (up to its trailer)."""
    return read_cpio_at(data, 0)[0]


def read_cpio_at(data: Bytes, start: int) -> tuple[list[CpioEntry], int]:
    """The entries of the newc archive at `start`, and the offset just past its trailer.

    Works on a view in place: an initrd is 100+ MiB and is scanned for archives at many offsets.
    """
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    entries: list[CpioEntry] = []
    at = start
    while True:
        name, mode, data_at, size = _entry_header(view, at)
        at = data_at + size + (-size % 4)
        if name == TRAILER:
            return entries, at
        entries.append(CpioEntry(name, mode, bytes(view[data_at : data_at + size])))


def _entry_header(view: Bytes, at: int) -> tuple[str, int, int, int]:
    """(name, mode, offset of the data, data size) of the entry whose header is at `at`."""
    if at + _HEADER_SIZE > len(view):
        raise CpioError("cpio header", "truncated archive (no trailer)", at)
    header = bytes(view[at : at + _HEADER_SIZE])
    if header[:6] != MAGIC:
        raise CpioError("cpio header", f"bad magic {header[:6]!r}", at)
    try:
        fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
    except ValueError:
        raise CpioError("cpio header", "fields are not hexadecimal", at) from None
    mode, size, name_size = fields[1], fields[6], fields[11]
    name_at = at + _HEADER_SIZE
    data_at = name_at + name_size + (-(_HEADER_SIZE + name_size) % 4)
    if name_size == 0 or data_at + size > len(view):
        raise CpioError("cpio entry", "name or data runs past the end", name_at)
    try:
        name = bytes(view[name_at : name_at + name_size - 1]).decode()
    except UnicodeDecodeError:
        raise CpioError("cpio entry", "name is not UTF-8", name_at) from None
    return name, mode, data_at, size


@dataclass(frozen=True)
class CpioArchive:
    offset: int
    end: int
    entries: tuple[CpioEntry, ...]

    def file(self, path: str) -> bytes | None:
        for entry in self.entries:
            if entry.path == path and stat.S_ISREG(entry.mode):
                return entry.data
        return None


def uncompressed_archives(initrd: Bytes) -> list[CpioArchive]:
    """Every uncompressed newc archive in a concatenated initrd, in order.

    Compressed members (mkosi's zstd initrd) cannot be delimited without decompressing them,
    so the scan looks for the newc magic and keeps what parses as a whole archive; a chance
    "070701" inside compressed data does not parse and is passed over.
    """
    data = initrd if isinstance(initrd, bytes) else bytes(initrd)
    found: list[CpioArchive] = []
    at = data.find(MAGIC)
    while at >= 0:
        try:
            entries, end = read_cpio_at(data, at)
        except CpioError:
            at = data.find(MAGIC, at + 1)
            continue
        found.append(CpioArchive(at, end, tuple(entries)))
        at = data.find(MAGIC, end)
    return found
