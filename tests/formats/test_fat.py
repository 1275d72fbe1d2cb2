"""FAT reader on a golden FAT12 volume made by mkfs.vfat + mtools; mutations -> FatError."""

from __future__ import annotations

import contextlib
import gzip
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ultraviolet.formats.fat import FatError, FatVolume

GOLDEN = gzip.decompress((Path(__file__).parents[1] / "fixtures" / "fat12.img.gz").read_bytes())


def test_golden_volume() -> None:
    volume = FatVolume.parse(GOLDEN)
    assert volume.fat_type == 12
    assert [path for path, _ in volume.walk()] == [
        "EFI",
        "EFI/BOOT",
        "EFI/BOOT/BOOTX64.EFI",
        "A long file name.txt",
    ]
    assert volume.read_file("EFI/BOOT/BOOTX64.EFI") == b"hello"
    assert volume.read_file("a LONG file NAME.txt") == b"x" * 9000
    entry = volume.listdir("")[1]
    assert entry.short_name == "ALONGF~1.TXT" and entry.size == 9000


def test_lookup_errors() -> None:
    volume = FatVolume.parse(GOLDEN)
    assert not volume.exists("EFI/Linux")
    with pytest.raises(FatError, match="no 'Linux'"):
        volume.listdir("EFI/Linux")
    with pytest.raises(FatError, match="not a file"):
        volume.read_file("EFI")
    with pytest.raises(FatError, match="not a directory"):
        volume.listdir("EFI/BOOT/BOOTX64.EFI")


def test_file_offset_errors() -> None:
    volume = FatVolume.parse(GOLDEN)
    path = next(p for p, entry in volume.walk() if not entry.is_dir and entry.size)
    content = volume.read_file(path)
    assert GOLDEN[volume.file_offset(path, len(content) - 1)] == content[-1]
    with pytest.raises(FatError, match="no byte"):
        volume.file_offset(path, len(content))
    with pytest.raises(FatError, match="no 'no'"):
        volume.file_offset("no/such/file", 0)


def test_bad_boot_sector_names_offset() -> None:
    broken = bytearray(GOLDEN)
    broken[510] = 0
    with pytest.raises(FatError, match="55 aa") as caught:
        FatVolume.parse(broken, base=1 << 20)
    assert caught.value.offset == (1 << 20) + 510


def test_cluster_loop_is_detected() -> None:
    volume = FatVolume.parse(GOLDEN)
    entry = volume.listdir("")[1]
    broken = bytearray(GOLDEN)
    # Point the file's first FAT12 entry at itself.
    fat = 512 * 1  # one reserved sector
    cluster = entry.first_cluster
    at = fat + cluster + cluster // 2
    pair = int.from_bytes(broken[at : at + 2], "little")
    pair = (pair & 0x000F) | (cluster << 4) if cluster & 1 else (pair & 0xF000) | cluster
    broken[at : at + 2] = pair.to_bytes(2, "little")
    with pytest.raises(FatError, match="loops"):
        FatVolume.parse(broken).read_file("A long file name.txt")


def _exercise(volume: FatVolume) -> None:
    for path, entry in volume.walk():
        if not entry.is_dir:
            volume.read_file(path)


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.integers(0, 16 * 1024 - 1), st.integers(0, 255)), min_size=1, max_size=8)
)
def test_mutations_raise_only_fat_error(mutations: list[tuple[int, int]]) -> None:
    data = bytearray(GOLDEN)
    for offset, value in mutations:
        data[offset] = value
    with contextlib.suppress(FatError):
        _exercise(FatVolume.parse(data))


@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    with contextlib.suppress(FatError):
        _exercise(FatVolume.parse(data))
