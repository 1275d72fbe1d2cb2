"""dm-verity trees: structure, verification results, corrupt superblocks -> VerityError."""

from __future__ import annotations

import contextlib
import hashlib
import random
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ultraviolet.formats.verity import (
    SUPERBLOCK_SIZE,
    VerityError,
    VerityParams,
    VeritySuperblock,
    build_hash_tree,
    format_hash_device,
    verify_hash_device,
)

BLOCK = 4096
VOLUME = uuid.UUID("12345678-1234-1234-1234-123456789abc")


def _data(blocks: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(blocks * BLOCK)


def test_single_block_root_is_the_block_digest() -> None:
    data = _data(1)
    tree = build_hash_tree(data, salt=b"salt")
    assert tree.levels == ()
    assert tree.root_hash == hashlib.sha256(b"salt" + data).digest()


def test_two_levels_by_hand() -> None:
    data = _data(129)  # 129 digests do not fit one 4096-byte block of 128
    tree = build_hash_tree(data)
    digests = b"".join(
        hashlib.sha256(data[i : i + BLOCK]).digest() for i in range(0, len(data), BLOCK)
    )
    level0 = digests.ljust(2 * BLOCK, b"\0")
    level1 = (
        hashlib.sha256(level0[:BLOCK]).digest() + hashlib.sha256(level0[BLOCK:]).digest()
    ).ljust(BLOCK, b"\0")
    assert tree.levels == (level0, level1)
    assert tree.root_hash == hashlib.sha256(level1).digest()
    assert tree.tree == level1 + level0  # top level first on disk


def test_superblock_round_trip_and_layout() -> None:
    hash_device, _root = format_hash_device(_data(3), salt=b"\x01" * 32, uuid=VOLUME)
    superblock = VeritySuperblock.parse(hash_device)
    assert superblock.to_bytes() == hash_device[:SUPERBLOCK_SIZE]
    assert (superblock.algorithm, superblock.data_blocks, superblock.salt) == (
        "sha256",
        3,
        b"\x01" * 32,
    )
    assert superblock.uuid == VOLUME
    assert hash_device[SUPERBLOCK_SIZE:BLOCK] == bytes(BLOCK - SUPERBLOCK_SIZE)
    assert len(hash_device) == 2 * BLOCK


@pytest.mark.parametrize("blocks", [1, 2, 130, 300])
def test_verify_accepts_and_locates_bad_data(blocks: int) -> None:
    data = bytearray(_data(blocks))
    hash_device, root = format_hash_device(data, salt=b"s", uuid=VOLUME)
    assert verify_hash_device(data, hash_device, root).ok
    bad_block = blocks * 2 // 3
    data[bad_block * BLOCK + 17] ^= 0x80
    check = verify_hash_device(data, hash_device, root)
    assert not check.ok and check.first_bad_block == bad_block


def test_verify_locates_bad_hash_blocks() -> None:
    data = _data(300)
    hash_device, root = format_hash_device(data, uuid=VOLUME)
    tampered = bytearray(hash_device)
    tampered[BLOCK + 5] ^= 1  # the top level block
    check = verify_hash_device(data, tampered, root)
    assert not check.ok and check.bad_hash_offset == BLOCK
    tampered = bytearray(hash_device)
    tampered[3 * BLOCK + 5] ^= 1  # second block of the data-level hashes
    check = verify_hash_device(data, tampered, root)
    assert not check.ok and check.bad_hash_offset == 3 * BLOCK


def test_wrong_root_hash() -> None:
    data = _data(5)
    hash_device, _root = format_hash_device(data, uuid=VOLUME)
    check = verify_hash_device(data, hash_device, bytes(32))
    assert not check.ok and "root hash" in check.message


def test_no_superblock_needs_params() -> None:
    data = _data(200)
    hash_device, root = format_hash_device(data, salt=b"x", superblock=False)
    assert verify_hash_device(
        data, hash_device, root, superblock=False, params=VerityParams(salt=b"x")
    ).ok
    assert not verify_hash_device(data, hash_device, root, superblock=False).ok


def test_data_larger_than_the_tree_is_fine() -> None:
    # systemd-repart partitions are often larger than the data the tree covers.
    data = _data(10)
    hash_device, root = format_hash_device(data, uuid=VOLUME)
    assert verify_hash_device(data + bytes(3 * BLOCK), hash_device, root).ok


def test_threads_give_the_same_tree() -> None:
    data = _data(5000)
    assert build_hash_tree(data, workers=3).root_hash == build_hash_tree(data).root_hash


def test_truncated_hash_device_is_a_format_error() -> None:
    data = _data(300)
    hash_device, root = format_hash_device(data, uuid=VOLUME)
    with pytest.raises(VerityError, match="truncated") as caught:
        verify_hash_device(data, hash_device[: 3 * BLOCK], root)
    assert caught.value.offset is not None


GOOD = format_hash_device(_data(140), salt=b"abc", uuid=VOLUME)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, len(GOOD[0]) - 1), st.integers(0, 255)), max_size=6))
def test_mutated_hash_devices(mutations: list[tuple[int, int]]) -> None:
    device = bytearray(GOOD[0])
    for offset, value in mutations:
        device[offset] = value
    data = _data(140)
    try:
        check = verify_hash_device(data, device, GOOD[1])
    except VerityError:
        return
    if check.ok:  # only mutations that changed nothing the kernel reads may pass
        superblock = VeritySuperblock.parse(device)
        assert superblock.params.salt == b"abc"


@given(st.binary(max_size=2000))
def test_random_superblocks(data: bytes) -> None:
    with contextlib.suppress(VerityError):
        VeritySuperblock.parse(data)
