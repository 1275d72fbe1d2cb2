"""PE/COFF images (Microsoft PE format spec): headers, data directories, sections; appending
sections the way ukify does, for building UKIs from a systemd-stub."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from ultraviolet.errors import FormatError
from ultraviolet.formats._reader import Bytes, Reader

PE32, PE32_PLUS = 0x10B, 0x20B
DIRECTORY_SECURITY = 4
SECTION_HEADER_SIZE = 40
SCN_CNT_CODE = 0x00000020
SCN_CNT_INITIALIZED_DATA = 0x00000040
SCN_MEM_READ = 0x40000000
DLL_NX_COMPAT = 0x0100
FILE_LOCAL_SYMS_STRIPPED = 0x0008
COFF_SYMBOL_SIZE = 18
_SECTION = struct.Struct("<8sIIIIIIHHI")
_MAX_SECTIONS = 96  # the PE spec's loader limit


class PeError(FormatError):
    pass


@dataclass(frozen=True)
class PeSection:
    name: str
    virtual_size: int
    virtual_address: int
    size_of_raw_data: int
    pointer_to_raw_data: int
    characteristics: int
    header_offset: int


@dataclass(frozen=True)
class DataDirectory:
    virtual_address: int  # a file offset for the certificate table
    size: int
    entry_offset: int  # where this directory entry sits in the headers


@dataclass(frozen=True)
class PeImage:
    machine: int
    characteristics: int
    is_pe32_plus: bool
    coff_offset: int
    optional_offset: int
    section_alignment: int
    file_alignment: int
    size_of_image: int
    size_of_headers: int
    size_of_initialized_data: int
    checksum: int
    checksum_offset: int
    dll_characteristics: int
    data_directories: tuple[DataDirectory, ...]
    sections: tuple[PeSection, ...]
    pointer_to_symbol_table: int
    number_of_symbols: int

    @property
    def certificate_table(self) -> DataDirectory | None:
        if len(self.data_directories) <= DIRECTORY_SECURITY:
            return None
        return self.data_directories[DIRECTORY_SECURITY]

    def section(self, name: str) -> PeSection | None:
        return next((s for s in self.sections if s.name == name), None)


def parse_pe(image: Bytes) -> PeImage:
    reader = Reader(image, "PE image", PeError)
    if reader.bytes_at(0, 2) != b"MZ":
        reader.fail("no MZ signature", 0)
    (pe_offset,) = reader.unpack_at("<I", 0x3C)
    if reader.bytes_at(pe_offset, 4) != b"PE\0\0":
        reader.fail("no PE signature", pe_offset)
    coff = pe_offset + 4
    machine, count, _, symbols, n_symbols, optional_size, characteristics = reader.unpack_at(
        "<HHIIIHH", coff
    )
    if count > _MAX_SECTIONS:
        reader.fail(f"{count} sections exceed the limit of {_MAX_SECTIONS}", coff + 2)
    optional = coff + 20
    (magic,) = reader.unpack_at("<H", optional)
    if magic not in (PE32, PE32_PLUS):
        reader.fail(f"unknown optional header magic 0x{magic:x}", optional)
    plus = magic == PE32_PLUS
    (initialized,) = reader.unpack_at("<I", optional + 8)
    section_alignment, file_alignment = reader.unpack_at("<II", optional + 32)
    size_of_image, size_of_headers, checksum = reader.unpack_at("<III", optional + 56)
    (dll,) = reader.unpack_at("<H", optional + 70)
    directories_at = optional + (112 if plus else 96)
    (n_directories,) = reader.unpack_at("<I", directories_at - 4)
    if n_directories > 16 or directories_at + 8 * n_directories > optional + optional_size:
        reader.fail(
            f"{n_directories} data directories do not fit the optional header", directories_at - 4
        )
    directories = tuple(_directory(reader, directories_at + 8 * i) for i in range(n_directories))
    sections = _sections(reader, optional + optional_size, count)
    return PeImage(
        machine,
        characteristics,
        plus,
        coff,
        optional,
        section_alignment,
        file_alignment,
        size_of_image,
        size_of_headers,
        initialized,
        checksum,
        optional + 64,
        dll,
        directories,
        sections,
        symbols,
        n_symbols,
    )


def _directory(reader: Reader, at: int) -> DataDirectory:
    address, size = reader.unpack_at("<II", at)
    return DataDirectory(address, size, at)


def _sections(reader: Reader, table: int, count: int) -> tuple[PeSection, ...]:
    sections = []
    for index in range(count):
        at = table + index * SECTION_HEADER_SIZE
        raw = reader.bytes_at(at, SECTION_HEADER_SIZE)
        name, vsize, vaddr, raw_size, raw_pointer, *_, flags = _SECTION.unpack(raw)
        try:
            text = name.rstrip(b"\0").decode("ascii")
        except UnicodeDecodeError:
            reader.fail(f"section {index} has a non-ASCII name", at)
        if raw_size and raw_pointer + raw_size > len(reader.data):
            reader.fail(f"section {text} data runs past the end of the file", at + 20)
        sections.append(PeSection(text, vsize, vaddr, raw_size, raw_pointer, flags, at))
    return tuple(sections)


MAX_ZERO_FILL = 16 << 20  # more implicit zeros than this in a section is not a UKI we load


def section_data(image: Bytes, section: PeSection) -> bytes:
    """VirtualSize bytes: the raw data, zero-padded when VirtualSize > SizeOfRawData."""
    stored = min(section.virtual_size, section.size_of_raw_data)
    if section.virtual_size - stored > MAX_ZERO_FILL:
        raise PeError(
            "PE section",
            f"{section.name}: VirtualSize {section.virtual_size} is "
            f"far beyond its {section.size_of_raw_data} bytes of data",
            section.header_offset + 8,
        )
    start = section.pointer_to_raw_data
    data = bytes(memoryview(image)[start : start + stored])
    return data + bytes(section.virtual_size - stored)


def round_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def _section_header(
    name: str, size: int, address: int, raw_size: int, pointer: int, flags: int
) -> bytes:
    encoded = name.encode("ascii")
    if len(encoded) > 8:
        raise PeError("PE section", f"section name {name!r} longer than 8 bytes")
    return _SECTION.pack(encoded, size, address, raw_size, pointer, 0, 0, 0, 0, flags)


def _check_stub(pe: PeImage) -> None:
    security = pe.certificate_table
    if security is not None and security.virtual_address:
        raise PeError("PE stub", "the stub is signed; refusing to add sections to it")
    for section in pe.sections:
        if section.pointer_to_raw_data % pe.file_alignment or (
            section.size_of_raw_data % pe.file_alignment
        ):
            raise PeError(
                "PE stub", f"section {section.name} is not file-aligned", section.header_offset
            )


def _strip_symbol_table(data: bytearray) -> bytearray:
    """Old stubs kept a COFF symbol table at the end of the file; ukify drops it, so do we."""
    pe = parse_pe(data)
    if not pe.pointer_to_symbol_table:
        return data
    end = pe.pointer_to_symbol_table + COFF_SYMBOL_SIZE * pe.number_of_symbols
    if end + 4 <= len(data):
        (strings,) = struct.unpack_from("<I", data, end)
        end += strings
    if end != len(data):
        return data  # not at the end: leave it, as ukify does
    del data[pe.pointer_to_symbol_table :]
    struct.pack_into("<II", data, pe.coff_offset + 8, 0, 0)
    flags = pe.characteristics | FILE_LOCAL_SYMS_STRIPPED
    struct.pack_into("<H", data, pe.coff_offset + 18, flags)
    return data


def _linux_keeps_nx(kernel: bytes) -> bool:
    try:
        return bool(parse_pe(kernel).dll_characteristics & DLL_NX_COMPAT)
    except PeError:
        return True  # not a PE kernel (tests use fake ones): nothing to mirror


def add_sections(stub: Bytes, sections: Sequence[tuple[str, bytes]]) -> bytes:
    """Append `sections` to a PE image as ukify does (a stub's own .sbat is replaced in place)."""
    data = _strip_symbol_table(bytearray(stub))
    pe = parse_pe(data)
    _check_stub(pe)
    size_of_headers = round_up(pe.size_of_headers, pe.file_alignment)
    original = {s.name: s for s in pe.sections}
    for name, content in sections:
        pe = parse_pe(data)
        if name in original and name != ".dtbauto":
            data = _replace_section(data, pe, original[name], content)
            continue
        data = _append_section(data, pe, name, content, size_of_headers)
    return _finish_headers(data, size_of_headers)


def _replace_section(data: bytearray, pe: PeImage, old: PeSection, content: bytes) -> bytearray:
    if len(content) > old.size_of_raw_data:
        raise PeError(
            "PE section",
            f"{old.name}: {len(content)} bytes do not fit the stub's {old.size_of_raw_data}",
        )
    start = old.pointer_to_raw_data
    data[start : start + old.size_of_raw_data] = content.ljust(old.size_of_raw_data, b"\0")
    struct.pack_into("<I", data, old.header_offset + 8, len(content))
    return data


def _append_section(
    data: bytearray, pe: PeImage, name: str, content: bytes, size_of_headers: int
) -> bytearray:
    last = pe.sections[-1]
    header_at = last.header_offset + SECTION_HEADER_SIZE
    if header_at + SECTION_HEADER_SIZE > size_of_headers:
        raise PeError("PE headers", f"not enough header space to add section {name}", header_at)
    pointer = round_up(len(data), pe.file_alignment)
    raw_size = round_up(len(content), pe.file_alignment)
    address = round_up(last.virtual_address + last.virtual_size, pe.section_alignment)
    flags = SCN_MEM_READ | (SCN_CNT_CODE if name == ".linux" else SCN_CNT_INITIALIZED_DATA)
    if name == ".linux" and not _linux_keeps_nx(content):
        dll_at = pe.optional_offset + 70
        struct.pack_into("<H", data, dll_at, pe.dll_characteristics & ~DLL_NX_COMPAT)
    data[header_at : header_at + SECTION_HEADER_SIZE] = _section_header(
        name, len(content), address, raw_size, pointer, flags
    )
    data.extend(bytes(pointer - len(data)))
    data.extend(content.ljust(raw_size, b"\0"))
    struct.pack_into("<H", data, pe.coff_offset + 2, len(pe.sections) + 1)
    struct.pack_into("<I", data, pe.optional_offset + 8, pe.size_of_initialized_data + len(content))
    return data


def _finish_headers(data: bytearray, size_of_headers: int) -> bytes:
    pe = parse_pe(data)
    last = pe.sections[-1]
    struct.pack_into("<I", data, pe.optional_offset + 60, size_of_headers)
    struct.pack_into("<I", data, pe.checksum_offset, 0)
    size_of_image = round_up(last.virtual_address + last.virtual_size, pe.section_alignment)
    struct.pack_into("<I", data, pe.optional_offset + 56, size_of_image)
    return bytes(data)
