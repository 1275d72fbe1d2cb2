"""erofs reader on a golden image made by mkfs.erofs (tests/fixtures/README.md); corrupt or
truncated images -> ErofsError with an offset, never another exception."""

from __future__ import annotations

import gzip
import os
import stat
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ultraviolet.formats.erofs import (
    FEATURE_COMPAT_SB_CHKSUM,
    SUPERBLOCK_OFFSET,
    ErofsError,
    ErofsImage,
    _raw_crc32c,
)

GOLDEN = gzip.decompress((Path(__file__).parents[1] / "fixtures" / "erofs.img.gz").read_bytes())
CAPS = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
METADATA_END = 64 * 1024  # the fixture's inodes, xattrs and directories sit below this


def _unchecked(data: bytes) -> bytearray:
    """The image with the superblock checksum feature cleared, so mutations reach the rest."""
    mutable = bytearray(data)
    compat = SUPERBLOCK_OFFSET + 8
    mutable[compat] &= ~FEATURE_COMPAT_SB_CHKSUM & 0xFF
    return mutable


def test_crc32c_is_the_kernels_uninverted_crc() -> None:
    assert _raw_crc32c(b"123456789") ^ 0xFFFFFFFF == 0xE3069283  # the CRC-32C check value


def test_golden_superblock_and_tree() -> None:
    image = ErofsImage.parse(GOLDEN)
    assert image.superblock.block_size == 4096
    assert image.superblock.feature_compat & FEATURE_COMPAT_SB_CHKSUM
    entries = dict(image.walk())
    # bin lib share; bin/* (5); lib/dev and its 3; share/* (6); big/* (300); deep/* (2);
    # deep/a/b/c/d/e/f and its file
    assert len(entries) == 3 + 5 + 4 + 6 + 300 + 2 + 5 + 1
    assert stat.S_IMODE(entries["bin/su"].mode) == 0o4755
    assert stat.S_IMODE(entries["bin/wall"].mode) == 0o2755 and entries["bin/wall"].gid == 5
    plain = entries["bin/plain"]
    assert plain.nlink == 2 and entries["bin/hardlink"].nid == plain.nid
    null, loop = entries["lib/dev/null"], entries["lib/dev/loop7"]
    assert stat.S_ISCHR(null.mode) and null.rdev == os.makedev(1, 3)
    assert stat.S_ISBLK(loop.mode) and loop.rdev == os.makedev(7, 7)
    assert stat.S_ISFIFO(entries["lib/dev/fifo"].mode)
    link = entries["share/deep/link"]
    assert stat.S_ISLNK(link.mode) and image.read_data(link) == b"../../bin/plain"
    large = entries["share/large-ids"]
    assert large.extended and (large.uid, large.gid) == (100000, 200000)
    assert not entries["share/owned"].extended and entries["share/owned"].uid == 1234
    assert os.fsdecode(b"share/name-\xff") in entries
    assert entries["share/deep/a/b/c/d/e/f/file"].size == 10000


def test_directory_of_several_blocks() -> None:
    image = ErofsImage.parse(GOLDEN)
    big = dict(image.walk())["share/big"]
    assert big.size > image.superblock.block_size
    names = [entry.name for entry in image.listdir(big)]
    assert names == [f"entry-{i:03d}-with-a-longer-name" for i in range(300)]


def test_inline_and_shared_xattrs() -> None:
    image = ErofsImage.parse(GOLDEN)
    entries = dict(image.walk())
    ping = {x.name: x.value for x in image.xattrs(entries["bin/ping"])}
    assert ping == {"security.capability": CAPS}
    plain = {x.name: x.value for x in image.xattrs(entries["bin/plain"])}
    assert plain == {"user.origin": b"ultraviolet test", "trusted.note": b"x" * 100}
    shared_count = image.data[entries["bin/plain"].end + 4]
    assert shared_count == 1  # user.origin is on two files: mkfs shares it
    assert image.xattrs(entries["share/owned"]) == ()


def test_not_a_directory() -> None:
    image = ErofsImage.parse(GOLDEN)
    with pytest.raises(ErofsError, match="not a directory"):
        image.listdir(dict(image.walk())["bin/su"])


@pytest.mark.parametrize(
    ("offset", "value", "message", "at"),
    [
        (SUPERBLOCK_OFFSET, b"\0\0\0\0", "bad magic", SUPERBLOCK_OFFSET),
        (SUPERBLOCK_OFFSET + 12, b"\x08", "block size", SUPERBLOCK_OFFSET + 12),
        (SUPERBLOCK_OFFSET + 80, b"\x00\x01\0\0", "incompatible features", SUPERBLOCK_OFFSET + 80),
        (SUPERBLOCK_OFFSET + 90, b"\x01", "directory blocks", SUPERBLOCK_OFFSET + 90),
    ],
)
def test_bad_superblock(offset: int, value: bytes, message: str, at: int) -> None:
    data = _unchecked(GOLDEN)
    data[offset : offset + len(value)] = value
    with pytest.raises(ErofsError, match=message) as caught:
        ErofsImage.parse(bytes(data))
    assert caught.value.offset == at


def test_checksum_and_truncation() -> None:
    data = bytearray(GOLDEN)
    data[SUPERBLOCK_OFFSET + 100] ^= 1
    with pytest.raises(ErofsError, match="checksum") as caught:
        ErofsImage.parse(bytes(data))
    assert caught.value.offset == SUPERBLOCK_OFFSET + 4
    with pytest.raises(ErofsError, match="truncated"):
        ErofsImage.parse(GOLDEN[:1100])


def test_base_offsets_errors_into_the_disk_image() -> None:
    image = ErofsImage.parse(GOLDEN[:METADATA_END], base=1 << 20)
    with pytest.raises(ErofsError) as caught:
        image.inode(METADATA_END // 32)
    assert caught.value.offset == (1 << 20) + METADATA_END


def _explore(data: bytes) -> None:
    image = ErofsImage.parse(data)
    for _, inode in image.walk():
        image.xattrs(inode)


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(st.integers(SUPERBLOCK_OFFSET, METADATA_END - 1), st.integers(1, 255)),
        min_size=1,
        max_size=8,
    )
)
def test_mutations_raise_only_erofs_errors(flips: list[tuple[int, int]]) -> None:
    data = _unchecked(GOLDEN)
    for offset, mask in flips:
        data[offset] ^= mask
    try:
        _explore(bytes(data))
    except ErofsError as error:
        assert error.offset is not None


@settings(max_examples=100)
@given(st.integers(0, len(GOLDEN) - 1))
def test_truncations_raise_only_erofs_errors(length: int) -> None:
    try:
        _explore(GOLDEN[:length])
    except ErofsError as error:
        assert error.offset is not None
