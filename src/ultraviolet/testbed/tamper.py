"""Tampered variants of a built image, as byte patches applied to the VM's overlay.

The image file is never touched: the VM script writes the patches into its qcow2 overlay
(`qemu-io`), so a tamper boot costs no copy. Each function names the byte(s) an attacker (or
a bad disk) would change and what the boot must then do:

- usr_superblock: a flipped byte in the erofs superblock of the usr data, the first block the
  boot reads from /usr: dm-verity must turn it into an I/O error, and /usr never mounts;
- uki_byte: a flipped byte inside the UKI's signed .osrel: the firmware must refuse the image;
- uki_unsigned: the UKI's certificate-table entry zeroed (no signature at all): refused too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ultraviolet.diskimage import UKI_DIRECTORY, open_disk_image, uki_paths
from ultraviolet.errors import UltravioletError
from ultraviolet.formats.fat import FatVolume
from ultraviolet.formats.pe import parse_pe

EROFS_SUPERBLOCK = 1024  # offset of the erofs superblock (its magic) in the file system


@dataclass(frozen=True)
class Patch:
    offset: int  # in the disk image
    data: bytes
    why: str


def _flip(image: Path, offset: int, why: str) -> Patch:
    with open_disk_image(image) as disk:
        original = disk.data[offset]
    return Patch(offset, bytes([original ^ 0xFF]), why)


def usr_superblock(image: Path) -> list[Patch]:
    with open_disk_image(image) as disk:
        slots = [p for p in disk.partitions_of_type("usr") if p.label != "_empty"]
        if not slots:
            raise UltravioletError(f"{image}: no usr partition to tamper with")
        offset = slots[0].start + EROFS_SUPERBLOCK
    return [_flip(image, offset, "flipped byte in the erofs superblock of /usr")]


def _uki_offset(image: Path, position_in: Callable[[bytes, str], int]) -> tuple[str, int]:
    """The ESP's (first) UKI and the image offset of the UKI byte `position_in` picks."""
    with open_disk_image(image) as disk:
        (esp,) = disk.partitions_of_type("esp")
        volume = FatVolume.parse(disk.partition_bytes(esp))
        paths = uki_paths(volume)
        if not paths:
            raise UltravioletError(f"{image}: no UKI in {UKI_DIRECTORY} to tamper with")
        position = position_in(volume.read_file(paths[0]), paths[0])
        return paths[0], esp.start + volume.file_offset(paths[0], position)


def _osrel(uki: bytes, path: str) -> int:
    section = parse_pe(uki).section(".osrel")
    if section is None:
        raise UltravioletError(f"{path} has no .osrel section")
    return section.pointer_to_raw_data


def _certificate_entry(uki: bytes, path: str) -> int:
    table = parse_pe(uki).certificate_table
    if table is None or not table.virtual_address:
        raise UltravioletError(f"{path} is not signed")
    return table.entry_offset


def uki_byte(image: Path) -> list[Patch]:
    path, offset = _uki_offset(image, _osrel)
    return [_flip(image, offset, f"flipped byte in the .osrel of {path}")]


def uki_unsigned(image: Path) -> list[Patch]:
    path, offset = _uki_offset(image, _certificate_entry)
    return [Patch(offset, bytes(8), f"certificate table of {path} removed")]


def qemu_io_commands(patches: list[Patch]) -> list[str]:
    """`qemu-io -c` commands writing the patches byte by byte (pattern writes of length 1)."""
    return [
        f"write -P 0x{value:02x} {patch.offset + index} 1"
        for patch in patches
        for index, value in enumerate(patch.data)
    ]
