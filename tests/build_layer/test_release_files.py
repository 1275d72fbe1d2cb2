"""Release file handling: sparse copies, hole-aware SHA-256, background digests with a cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ultraviolet.build.release import FileDigests, copy_sparse, sha256_file

MIB = 1 << 20


def _sparse_file(path: Path) -> bytes:
    """A 40 MiB file with data at the start, in the middle and at the very end; holes between."""
    with path.open("wb") as handle:
        handle.truncate(40 * MIB)
        for offset, data in (
            (0, b"start" * 1000),
            (17 * MIB + 5, b"middle"),
            (40 * MIB - 3, b"end"),
        ):
            handle.seek(offset)
            handle.write(data)
    return path.read_bytes()


def test_sparse_copy_keeps_content_and_holes(tmp_path: Path) -> None:
    source = tmp_path / "image.raw"
    content = _sparse_file(source)
    copy_sparse(source, tmp_path / "copy.raw")
    assert (tmp_path / "copy.raw").read_bytes() == content
    allocated = os.stat(tmp_path / "copy.raw").st_blocks * 512
    assert allocated <= os.stat(source).st_blocks * 512 < 40 * MIB


def test_hole_aware_digest_equals_reading_everything(tmp_path: Path) -> None:
    source = tmp_path / "image.raw"
    content = _sparse_file(source)
    assert sha256_file(source) == hashlib.sha256(content).hexdigest()
    dense = tmp_path / "dense"
    dense.write_bytes(os.urandom(5 * MIB + 17))
    assert sha256_file(dense) == hashlib.sha256(dense.read_bytes()).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
    hole_only = tmp_path / "hole"
    with hole_only.open("wb") as handle:
        handle.truncate(3 * MIB)
    assert sha256_file(hole_only) == hashlib.sha256(bytes(3 * MIB)).hexdigest()


def test_digests_are_cached_per_file_identity(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_bytes(b"a" * 1000)
    second.write_bytes(b"b" * 1000)
    cache = tmp_path / ".sha256sums"
    with FileDigests(cache) as digests:
        digests.start(first)
        assert digests.digest(first) == hashlib.sha256(b"a" * 1000).hexdigest()
        digests.remember([first, second])
    assert len(cache.read_text().splitlines()) == 2
    (tmp_path / "a-link").hardlink_to(first)  # same inode: the cached digest serves it
    cached = cache.read_text().replace(hashlib.sha256(b"a" * 1000).hexdigest(), "0" * 64)
    cache.write_text(cached)
    with FileDigests(cache) as digests:
        assert digests.digest(tmp_path / "a-link") == "0" * 64  # from the cache, not hashed
        second.write_bytes(b"c" * 1001)  # changed: size and mtime differ, hashed again
        assert digests.digest(second) == hashlib.sha256(b"c" * 1001).hexdigest()
