"""dm-verity hash trees exactly as `veritysetup format` writes them (cryptsetup lib/verity).

Format (hash_type 1): each block's digest is H(salt || block); digests are packed into hash
blocks (zero padded), level by level, until a level fits one block; root hash = H(salt || that
block). On disk the levels are stored top level first, data-level hashes last, after an optional
512-byte superblock padded to one hash block. Verification mirrors the kernel: the top block
against the root hash, each stored level against the level above, then the data.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from uuid import UUID

from ultraviolet.errors import FormatError
from ultraviolet.formats._reader import Bytes, Reader

SIGNATURE = b"verity\0\0"
SUPERBLOCK_SIZE = 512
_SUPERBLOCK = struct.Struct("<8sII16s32sIIQH6s256s168s")
_MAX_SALT = 256
_CHUNK_BLOCKS = 2048  # blocks per worker task: large enough to amortise scheduling


class VerityError(FormatError):
    pass


@dataclass(frozen=True)
class VerityParams:
    algorithm: str = "sha256"
    data_block_size: int = 4096
    hash_block_size: int = 4096
    salt: bytes = b""
    hash_type: int = 1

    @property
    def digest_size(self) -> int:
        return hashlib.new(self.algorithm).digest_size

    @property
    def digests_per_block(self) -> int:
        # Version 1 pads each digest to a power of two (sha256: 32, fits exactly).
        padded = 1 << (self.digest_size - 1).bit_length()
        return self.hash_block_size // padded

    @property
    def padded_digest_size(self) -> int:
        return 1 << (self.digest_size - 1).bit_length()


@dataclass(frozen=True)
class VeritySuperblock:
    version: int
    hash_type: int
    uuid: UUID
    algorithm: str
    data_block_size: int
    hash_block_size: int
    data_blocks: int
    salt: bytes

    @classmethod
    def parse(cls, data: Bytes, *, base: int = 0) -> VeritySuperblock:
        reader = Reader(data, "verity superblock", VerityError, base=base)
        fields = _SUPERBLOCK.unpack(reader.bytes_at(0, SUPERBLOCK_SIZE))
        (
            signature,
            version,
            hash_type,
            raw_uuid,
            algorithm,
            data_bs,
            hash_bs,
            blocks,
            salt_size,
            _,
            salt,
            _,
        ) = fields
        if signature != SIGNATURE:
            reader.fail(f"bad signature {signature!r}, expected {SIGNATURE!r}", 0)
        if version != 1:
            reader.fail(f"unsupported version {version}", 8)
        if hash_type not in (0, 1):
            reader.fail(f"unsupported hash type {hash_type}", 12)
        name = algorithm.rstrip(b"\0").decode("ascii", errors="replace")
        if name not in hashlib.algorithms_available:
            reader.fail(f"unknown hash algorithm {name!r}", 32)
        for size, at in ((data_bs, 64), (hash_bs, 68)):
            if size < 512 or size > 1 << 20 or size & (size - 1):
                reader.fail(f"block size {size} is not a power of two in 512..1M", at)
        if salt_size > _MAX_SALT:
            reader.fail(f"salt size {salt_size} exceeds {_MAX_SALT}", 80)
        return cls(
            version,
            hash_type,
            UUID(bytes=raw_uuid),
            name,
            data_bs,
            hash_bs,
            blocks,
            salt[:salt_size],
        )

    @property
    def params(self) -> VerityParams:
        return VerityParams(
            self.algorithm, self.data_block_size, self.hash_block_size, self.salt, self.hash_type
        )

    def to_bytes(self) -> bytes:
        return _SUPERBLOCK.pack(
            SIGNATURE,
            self.version,
            self.hash_type,
            self.uuid.bytes,
            self.algorithm.encode("ascii"),
            self.data_block_size,
            self.hash_block_size,
            self.data_blocks,
            len(self.salt),
            bytes(6),
            self.salt,
            bytes(168),
        )


@dataclass(frozen=True)
class HashTree:
    root_hash: bytes
    levels: tuple[bytes, ...]  # packed hash blocks per level, data-level hashes first
    params: VerityParams
    data_blocks: int

    @property
    def tree(self) -> bytes:
        """The on-disk tree: top level first."""
        return b"".join(reversed(self.levels))

    @property
    def hash_blocks(self) -> int:
        return sum(len(level) for level in self.levels) // self.params.hash_block_size


def _hasher(params: VerityParams) -> Callable[[Bytes], bytes]:
    base = hashlib.new(params.algorithm)
    if params.hash_type == 1:
        base.update(params.salt)

        def digest(block: Bytes) -> bytes:
            h = base.copy()
            h.update(block)
            return h.digest()

        return digest

    def digest_v0(block: Bytes) -> bytes:  # Chrome OS format: salt after the data
        h = base.copy()
        h.update(block)
        h.update(params.salt)
        return h.digest()

    return digest_v0


def _digest_blocks(
    data: Bytes, block_size: int, count: int, params: VerityParams, workers: int
) -> bytes:
    """Concatenated digests (padded to the version's size) of `count` blocks of `data`."""
    view = memoryview(data).cast("B")
    digest = _hasher(params)
    pad = bytes(params.padded_digest_size - params.digest_size)

    def run(first: int) -> bytes:
        last = min(first + _CHUNK_BLOCKS, count)
        return b"".join(
            digest(view[i * block_size : (i + 1) * block_size]) + pad for i in range(first, last)
        )

    starts = range(0, count, _CHUNK_BLOCKS)
    if workers <= 1 or count <= _CHUNK_BLOCKS:
        return b"".join(map(run, starts))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return b"".join(pool.map(run, starts))


def _pack_level(digests: bytes, params: VerityParams) -> bytes:
    block = params.hash_block_size
    return digests + bytes(-len(digests) % block)


def build_hash_tree(
    data: Bytes,
    *,
    salt: bytes = b"",
    data_block_size: int = 4096,
    hash_block_size: int = 4096,
    algorithm: str = "sha256",
    data_blocks: int | None = None,
    workers: int = 1,
) -> HashTree:
    """The hash tree over the first `data_blocks` blocks of `data` (default: all whole blocks)."""
    params = VerityParams(algorithm, data_block_size, hash_block_size, salt)
    if len(salt) > _MAX_SALT:
        raise VerityError("verity parameters", f"salt longer than {_MAX_SALT} bytes")
    available = len(data) // data_block_size
    count = available if data_blocks is None else data_blocks
    if count < 1 or count > available:
        raise VerityError("verity data", f"need 1..{available} data blocks, asked for {count}")
    return _tree_from_level0(
        _digest_blocks(data, data_block_size, count, params, workers), params, count
    )


def _tree_from_level0(digests: bytes, params: VerityParams, data_blocks: int) -> HashTree:
    # Like cryptsetup: a single data block needs no tree, its digest is the root hash.
    if data_blocks == 1:
        return HashTree(digests[: params.digest_size], (), params, data_blocks)
    levels = [_pack_level(digests, params)]
    while len(levels[-1]) > params.hash_block_size:
        below = levels[-1]
        count = len(below) // params.hash_block_size
        levels.append(
            _pack_level(_digest_blocks(below, params.hash_block_size, count, params, 1), params)
        )
    root = _hasher(params)(levels[-1])
    return HashTree(root, tuple(levels), params, data_blocks)


def format_hash_device(
    data: Bytes,
    *,
    salt: bytes = b"",
    uuid: UUID | None = None,
    superblock: bool = True,
    data_block_size: int = 4096,
    hash_block_size: int = 4096,
    algorithm: str = "sha256",
    workers: int = 1,
) -> tuple[bytes, bytes]:
    """(hash device, root hash) as `veritysetup format [--no-superblock]` writes them."""
    tree = build_hash_tree(
        data,
        salt=salt,
        data_block_size=data_block_size,
        hash_block_size=hash_block_size,
        algorithm=algorithm,
        workers=workers,
    )
    if not superblock:
        return tree.tree, tree.root_hash
    if uuid is None:
        raise VerityError("verity superblock", "a UUID is needed to write a superblock")
    header = VeritySuperblock(
        1, 1, uuid, algorithm, data_block_size, hash_block_size, tree.data_blocks, salt
    )
    return header.to_bytes().ljust(hash_block_size, b"\0") + tree.tree, tree.root_hash


@dataclass(frozen=True)
class VerityCheck:
    ok: bool
    message: str
    first_bad_block: int | None = None  # data block index when the data is at fault
    bad_hash_offset: int | None = None  # byte offset in the hash device when the tree is


def _level_sizes(data_blocks: int, params: VerityParams) -> list[int]:
    """Hash blocks per level, data-level first (none for a single data block)."""
    sizes = []
    entries = data_blocks
    while entries > 1:
        entries = -(-entries // params.digests_per_block)
        sizes.append(entries)
    return sizes


def verify_hash_device(
    data: Bytes,
    hash_device: Bytes,
    root_hash: bytes,
    *,
    superblock: bool = True,
    params: VerityParams | None = None,
    data_blocks: int | None = None,
    workers: int = 1,
) -> VerityCheck:
    """Check `data` against a stored tree and root hash, top down like the kernel does."""
    if superblock:
        header = VeritySuperblock.parse(hash_device)
        params, data_blocks = header.params, header.data_blocks
        tree_offset = header.hash_block_size
    else:
        params = params or VerityParams()
        data_blocks = len(data) // params.data_block_size if data_blocks is None else data_blocks
        tree_offset = 0
    if data_blocks < 1 or data_blocks * params.data_block_size > len(data):
        return VerityCheck(
            False,
            f"data holds {len(data) // params.data_block_size} blocks, "
            f"the tree covers {data_blocks}",
        )
    levels = _stored_levels(hash_device, tree_offset, data_blocks, params)
    problem = _check_stored_levels(levels, root_hash, params)
    if problem:
        return problem
    computed = _digest_blocks(data, params.data_block_size, data_blocks, params, workers)
    expected = bytes(levels[0][1][: len(computed)]) if levels else root_hash.ljust(len(computed))
    if computed == expected:
        return VerityCheck(True, f"{data_blocks} data blocks match the tree and root hash")
    bad = _first_difference(computed, expected, params.padded_digest_size)
    return VerityCheck(False, f"data block {bad} does not match its hash", first_bad_block=bad)


def _stored_levels(
    hash_device: Bytes, offset: int, data_blocks: int, params: VerityParams
) -> list[tuple[int, memoryview]]:
    """(offset, bytes) of each stored level, data-level first, bounds-checked."""
    sizes = _level_sizes(data_blocks, params)
    reader = Reader(hash_device, "verity hash tree", VerityError)
    view = memoryview(hash_device).cast("B")
    located: list[tuple[int, memoryview]] = []
    position = offset
    for blocks in reversed(sizes):  # stored top level first
        length = blocks * params.hash_block_size
        reader.require(length, position)
        located.append((position, view[position : position + length]))
        position += length
    return list(reversed(located))


def _check_stored_levels(
    levels: Sequence[tuple[int, memoryview]], root_hash: bytes, params: VerityParams
) -> VerityCheck | None:
    if not levels:
        return None  # a single data block: checked against the root hash directly
    digest = _hasher(params)
    top_offset, top = levels[-1]
    if digest(top) != root_hash:
        return VerityCheck(
            False, "the top hash block does not match the root hash", bad_hash_offset=top_offset
        )
    for (offset, lower), (_, upper) in itertools.pairwise(levels):
        count = len(lower) // params.hash_block_size
        computed = _digest_blocks(lower, params.hash_block_size, count, params, 1)
        if computed != bytes(upper[: len(computed)]):
            bad = _first_difference(computed, upper, params.padded_digest_size)
            return VerityCheck(
                False,
                f"hash block at offset {offset + bad * params.hash_block_size}"
                " does not match the level above",
                bad_hash_offset=offset + bad * params.hash_block_size,
            )
    return None


def _first_difference(computed: bytes, stored: Bytes, digest_size: int) -> int:
    """Index of the first digest that differs between two packed digest arrays."""
    stored_bytes = memoryview(stored).cast("B")
    for index in range(len(computed) // digest_size):
        at = index * digest_size
        if computed[at : at + digest_size] != stored_bytes[at : at + digest_size]:
            return index
    return len(computed) // digest_size
