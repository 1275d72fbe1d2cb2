"""A minimal, valid PE32+ image written by hand for parser unit tests (no tools needed)."""

from __future__ import annotations

import struct

FILE_ALIGNMENT = 0x200
SECTION_ALIGNMENT = 0x1000


def minimal_pe(
    sections: list[tuple[str, bytes]], *, header_room: int = 8, plus: bool = True
) -> bytes:
    """DOS stub + PE32+ (or PE32) headers with room for `header_room` more sections, then the
    sections."""
    pe_offset = 0x80
    fixed = 112 if plus else 96
    optional_size = fixed + 16 * 8
    table = pe_offset + 4 + 20 + optional_size
    headers = -(-(table + 40 * (len(sections) + header_room)) // FILE_ALIGNMENT) * FILE_ALIGNMENT
    image = bytearray(headers)
    image[0:2] = b"MZ"
    struct.pack_into("<I", image, 0x3C, pe_offset)
    image[pe_offset : pe_offset + 4] = b"PE\0\0"
    struct.pack_into(
        "<HHIIIHH", image, pe_offset + 4, 0x8664, len(sections), 0, 0, 0, optional_size, 0x0022
    )
    optional = pe_offset + 24
    struct.pack_into("<HBB", image, optional, 0x20B if plus else 0x10B, 0, 0)
    struct.pack_into("<II", image, optional + 32, SECTION_ALIGNMENT, FILE_ALIGNMENT)
    struct.pack_into("<H", image, optional + 68, 10)  # EFI application
    struct.pack_into("<H", image, optional + 70, 0x0100)  # NX compatible
    struct.pack_into("<I", image, optional + fixed - 4, 16)
    address = SECTION_ALIGNMENT
    for index, (name, data) in enumerate(sections):
        raw = -(-len(data) // FILE_ALIGNMENT) * FILE_ALIGNMENT
        struct.pack_into(
            "<8sIIIIIIHHI",
            image,
            table + 40 * index,
            name.encode(),
            len(data),
            address,
            raw,
            len(image),
            0,
            0,
            0,
            0,
            0x40000040,
        )
        image.extend(data.ljust(raw, b"\0"))
        address += -(-len(data) // SECTION_ALIGNMENT) * SECTION_ALIGNMENT
    struct.pack_into("<III", image, optional + 56, address, headers, 0)
    return bytes(image)
