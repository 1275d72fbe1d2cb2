"""Bounds-checked binary reading shared by every parser.

Parsers never let IndexError or struct.error escape: every read goes through a Reader, which
raises the parser's own FormatError subclass with the absolute offset of the failed read.
"""

from __future__ import annotations

import struct
from typing import NoReturn

from ultraviolet.errors import FormatError

# What parsers accept: bytes, or a zero-copy view such as a memoryview over an mmap of an image.
Bytes = bytes | bytearray | memoryview


class Reader:
    """A cursor over immutable bytes that reports failures as `error_type` with offsets.

    `base` is added to every reported offset so that a reader over a slice of a larger file
    (a partition inside a disk image) reports offsets in the larger file.
    """

    def __init__(
        self,
        data: Bytes,
        structure: str,
        error_type: type[FormatError] = FormatError,
        *,
        base: int = 0,
    ) -> None:
        self.data: Bytes = data if isinstance(data, bytes) else memoryview(data).cast("B")
        self.structure = structure
        self.error_type = error_type
        self.base = base
        self.pos = 0

    def fail(self, message: str, offset: int | None = None) -> NoReturn:
        at = self.pos if offset is None else offset
        raise self.error_type(self.structure, message, self.base + at)

    def require(self, size: int, offset: int | None = None) -> int:
        """Check that `size` bytes exist at `offset` (default: cursor); return the offset."""
        at = self.pos if offset is None else offset
        if at < 0 or size < 0 or at + size > len(self.data):
            self.fail(f"truncated: need {size} bytes, {max(0, len(self.data) - at)} left", at)
        return at

    def bytes_at(self, offset: int, size: int) -> bytes:
        at = self.require(size, offset)
        return bytes(self.data[at : at + size])

    def unpack_at(self, fmt: str, offset: int) -> tuple[int, ...]:
        at = self.require(struct.calcsize(fmt), offset)
        return struct.unpack_from(fmt, self.data, at)

    def read(self, size: int) -> bytes:
        value = self.bytes_at(self.pos, size)
        self.pos += size
        return value

    def unpack(self, fmt: str) -> tuple[int, ...]:
        values = self.unpack_at(fmt, self.pos)
        self.pos += struct.calcsize(fmt)
        return values

    def u8(self) -> int:
        return self.unpack("<B")[0]

    def u16(self) -> int:
        return self.unpack("<H")[0]

    def u32(self) -> int:
        return self.unpack("<I")[0]

    def u64(self) -> int:
        return self.unpack("<Q")[0]

    def seek(self, offset: int) -> None:
        self.require(0, offset)
        self.pos = offset

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos
