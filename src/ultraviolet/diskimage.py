"""Read-only access to image files (below build and verify): an mmap, its GPT, partition views.

Works on a plain file as an unprivileged user: no loop devices, no mounting.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from ultraviolet.errors import VerificationError
from ultraviolet.formats.fat import FatVolume
from ultraviolet.formats.gpt import GptPartition, GptTable, parse_gpt

UKI_DIRECTORY = "EFI/Linux"


def uki_paths(esp: FatVolume) -> list[str]:
    """The UKIs (EFI/Linux/*.efi files) of an ESP, sorted; none if the directory is missing."""
    if not esp.exists(UKI_DIRECTORY):
        return []
    return sorted(
        f"{UKI_DIRECTORY}/{entry.name}"
        for entry in esp.listdir(UKI_DIRECTORY)
        if not entry.is_dir and entry.name.lower().endswith(".efi")
    )


# Threads for hashing (hashlib releases the GIL on large buffers).
HASH_WORKERS = os.cpu_count() or 1


@dataclass(frozen=True)
class DiskImage:
    path: Path
    data: memoryview
    gpt: GptTable

    def partition_bytes(self, partition: GptPartition) -> memoryview:
        end = partition.start + partition.size
        if end > len(self.data):
            raise VerificationError(
                f"{self.path}: partition {partition.number} ends at byte {end}, "
                f"beyond the end of the file ({len(self.data)} bytes)"
            )
        return self.data[partition.start : end]

    def partitions_of_type(self, name: str) -> tuple[GptPartition, ...]:
        return tuple(p for p in self.gpt.partitions if p.type is not None and p.type.name == name)


@contextmanager
def map_file(path: Path, *, populate: bool = True) -> Iterator[memoryview]:
    """A read-only memoryview of a whole file (zero-copy for large images); `populate=False`
    faults pages in only as they are read (for a few metadata blocks of a large image)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise VerificationError(f"cannot open {path}: {exc.strerror}") from exc
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise VerificationError(f"{path} is empty")
        # MAP_POPULATE faults the whole file in at once: hashing a lazily faulted mapping from
        # several threads spends more time in page faults than in SHA-256.
        flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
        mapping = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    view = memoryview(mapping)
    try:
        yield view
    finally:
        # Slices handed out (partition views) keep the mapping exported; then closing fails and
        # the mapping is released by the garbage collector once the last slice is gone.
        with suppress(BufferError):
            view.release()
            mapping.close()


@contextmanager
def open_disk_image(path: Path, *, populate: bool = True) -> Iterator[DiskImage]:
    """Map `path` and parse its GPT; a bad GPT raises the format's error with its offset."""
    with map_file(path, populate=populate) as data:
        yield DiskImage(path, data, parse_gpt(data))
