"""Our FAT reader against mkfs.vfat + mtools: same tree, same bytes, for FAT12/16/32."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from ultraviolet.formats.fat import FatVolume
from ultraviolet.tools import ToolsChroot

pytestmark = pytest.mark.oracle

MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}
# (fat bits, image size in KiB, mkfs.vfat options)
VARIANTS = [
    (12, 1440, ["-F", "12"]),
    (16, 32 * 1024, ["-F", "16"]),
    (32, 64 * 1024, ["-F", "32", "-s", "1"]),
]


def _populate(tools: ToolsChroot, image: Path, files: Path, fragmented: Path) -> None:
    """Copy the tree in and fragment one file by deleting a neighbour before it grows."""

    def mtools(*argv: str) -> None:
        tools.run([*argv], binds=[image.parent], env=MTOOLS_ENV)

    mtools("mmd", "-i", str(image), "::EFI", "::EFI/Linux", "::EFI/BOOT", "::loader")
    for path in sorted(files.rglob("*")):
        if path.is_file():
            target = "::" + str(path.relative_to(files))
            mtools("mcopy", "-i", str(image), str(path), target)
    mtools("mcopy", "-i", str(image), str(files / "EFI/BOOT/BOOTX64.EFI"), "::gap1")
    mtools("mcopy", "-i", str(image), str(files / "EFI/BOOT/BOOTX64.EFI"), "::gap2")
    mtools("mdel", "-i", str(image), "::gap1")
    # The freed gap is too small for this file: FAT allocates its first clusters there.
    mtools("mcopy", "-i", str(image), str(fragmented), "::loader/fragmented.bin")


def _tree(root: Path) -> None:
    rng = random.Random(7)
    layout = {
        "EFI/BOOT/BOOTX64.EFI": 20000,
        "EFI/Linux/uvminimal-6.12.117+deb13-amd64-0e9a00811725c6c46aac.efi": 70000,
        "EFI/Linux/Short.Txt": 10,
        "EFI/Linux/UPPER.TXT": 3,
        "loader/loader.conf": 30,
        "loader/empty": 0,
        "Mixed Case Name With Spaces.conf": 513,
    }
    for name, size in layout.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))


@pytest.mark.parametrize(("bits", "size_kib", "mkfs"), VARIANTS, ids=["fat12", "fat16", "fat32"])
def test_tree_and_contents_match_mtools(
    tools_chroot: ToolsChroot, tmp_path: Path, bits: int, size_kib: int, mkfs: list[str]
) -> None:
    files = tmp_path / "files"
    _tree(files)
    image = tmp_path / "esp.img"
    with image.open("wb") as handle:
        handle.truncate(size_kib * 1024)
    tools_chroot.run(["mkfs.vfat", *mkfs, str(image)], binds=[tmp_path])
    fragmented = tmp_path / "fragmented.bin"
    fragmented.write_bytes(random.Random(8).randbytes(50000))
    _populate(tools_chroot, image, files, fragmented)
    listing = tools_chroot.run(
        ["mdir", "-/", "-b", "-i", str(image), "::"], binds=[tmp_path], env=MTOOLS_ENV
    ).text
    theirs = sorted(line.removeprefix("::/").rstrip("/") for line in listing.splitlines() if line)
    volume = FatVolume.parse(image.read_bytes())
    assert volume.fat_type == bits
    ours = sorted(path for path, _ in volume.walk())
    assert ours == theirs
    out = tmp_path / "out"
    out.mkdir()
    tools_chroot.run(
        ["mcopy", "-s", "-i", str(image), "::*", str(out)], binds=[tmp_path], env=MTOOLS_ENV
    )
    for path, entry in volume.walk():
        if not entry.is_dir:
            assert volume.read_file(path) == (out / path).read_bytes(), path
    assert volume.read_file("efi/linux/short.txt") == (files / "EFI/Linux/Short.Txt").read_bytes()
    assert volume.read_file("loader/fragmented.bin") == fragmented.read_bytes()


def _clusters(volume: FatVolume, path: str) -> list[int]:
    parent, _, name = path.rpartition("/")
    (entry,) = [e for e in volume.listdir(parent) if e.name == name]
    return list(volume._chain(entry.first_cluster, entry.offset))


def test_fragmented_file_is_really_fragmented(tools_chroot: ToolsChroot, tmp_path: Path) -> None:
    files = tmp_path / "files"
    _tree(files)
    image = tmp_path / "esp.img"
    with image.open("wb") as handle:
        handle.truncate(1440 * 1024)
    tools_chroot.run(["mkfs.vfat", "-F", "12", str(image)], binds=[tmp_path])
    fragmented = tmp_path / "fragmented.bin"
    fragmented.write_bytes(random.Random(8).randbytes(50000))
    _populate(tools_chroot, image, files, fragmented)
    volume = FatVolume.parse(image.read_bytes())
    clusters = _clusters(volume, "loader/fragmented.bin")
    assert any(b != a + 1 for a, b in itertools.pairwise(clusters))
    assert volume.read_file("loader/fragmented.bin") == fragmented.read_bytes()


def test_file_offsets_patch_what_mtools_reads(tools_chroot: ToolsChroot, tmp_path: Path) -> None:
    """Patching the bytes file_offset names (as the tamper tests do to a UKI in an ESP) changes
    exactly those bytes of the file as mtools reads it, across fragment boundaries."""
    files = tmp_path / "files"
    _tree(files)
    image = tmp_path / "esp.img"
    with image.open("wb") as handle:
        handle.truncate(1440 * 1024)
    tools_chroot.run(["mkfs.vfat", "-F", "12", str(image)], binds=[tmp_path])
    fragmented = tmp_path / "fragmented.bin"
    original = random.Random(8).randbytes(50000)
    fragmented.write_bytes(original)
    _populate(tools_chroot, image, files, fragmented)
    data = bytearray(image.read_bytes())
    volume = FatVolume.parse(bytes(data))
    expected = bytearray(original)
    for position in (0, 511, 512, 2047, 2048, 20000, 49999):
        offset = volume.file_offset("loader/fragmented.bin", position)
        assert data[offset] == original[position]
        data[offset] ^= 0xFF
        expected[position] ^= 0xFF
    image.write_bytes(bytes(data))
    out = tmp_path / "out.bin"
    tools_chroot.run(
        ["mcopy", "-i", str(image), "::loader/fragmented.bin", str(out)],
        binds=[tmp_path],
        env=MTOOLS_ENV,
    )
    assert out.read_bytes() == bytes(expected)
