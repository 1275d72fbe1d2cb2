"""The release directory of a build and its reference values (reference.json).

release/NAME_VERSION.raw                 whole disk image
release/NAME_VERSION.efi                 signed UKI
release/NAME_VERSION.usr*.raw            split partitions for sysupdate
release/SHA256SUMS, SHA256SUMS.p7s/.gpg  manifest, signed with the update key (PKCS#7; OpenPGP
                                         for systemd-sysupdate's Verify=yes)
release/reference.json                   what a node running this release must show
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from ultraviolet.build.keyset import KeySet
from ultraviolet.build.mkosi import MkosiOutputs
from ultraviolet.diskimage import map_file, open_disk_image
from ultraviolet.errors import BuildError
from ultraviolet.formats.authenticode import authenticode_digest
from ultraviolet.formats.fat import FatVolume
from ultraviolet.formats.gpt import root_hash_partition_uuids
from ultraviolet.formats.pcr import predicted_pcr11
from ultraviolet.formats.reference import Reference, render_reference
from ultraviolet.formats.uki import parse_uki
from ultraviolet.formats.veritysig import parse_verity_sig
from ultraviolet.policy.model import NodePolicy

# mkosi's split partitions; the release names the usr and usr-verity ones NAME_VERSION_UUID so
# that systemd-sysupdate gives the B slot the partition UUIDs derived from the root hash (`@u`
# in the transfer's MatchPattern): usrhash= alone must find the partitions after an update.
SPLIT_SUFFIXES = (".usr.raw", ".usr-verity.raw", ".usr-verity-sig.raw")


def release_split_names(stem: str, root_hash: bytes) -> dict[str, str]:
    """mkosi's split file suffix -> the release's file name."""
    data_uuid, verity_uuid = root_hash_partition_uuids(root_hash)
    return {
        ".usr.raw": f"{stem}_{data_uuid}.usr.raw",
        ".usr-verity.raw": f"{stem}_{verity_uuid}.usr-verity.raw",
        ".usr-verity-sig.raw": f"{stem}.usr-verity-sig.raw",
    }


_CHUNK = 4 << 20
_ZEROS = memoryview(bytes(_CHUNK))


def _extents(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
    """(offset, length, holds data) runs of a file, holes found with SEEK_DATA/SEEK_HOLE (a
    file system without them reports one data run)."""
    offset = 0
    while offset < size:
        try:
            data = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: only a hole is left
                raise
            data = size
        if data > offset:
            yield offset, data - offset, False
        if data >= size:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
        yield data, hole - data, True
        offset = hole


def sha256_file(path: Path) -> str:
    """SHA-256 of a file; holes of sparse files (most of a disk image) are hashed as the zeros
    they read as, without reading them."""
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset, length, has_data in _extents(fd, os.fstat(fd).st_size):
            end = offset + length
            while offset < end:
                wanted = min(end - offset, _CHUNK)
                if not has_data:
                    digest.update(_ZEROS[:wanted])
                    offset += wanted
                    continue
                got = os.preadv(fd, [view[:wanted]], offset)
                if got <= 0:
                    raise BuildError(f"{path} changed while it was hashed")
                digest.update(view[:got])
                offset += got
    finally:
        os.close(fd)
    return digest.hexdigest()


def copy_sparse(source: Path, target: Path) -> None:
    """Copy a file's data runs in the kernel (copy_file_range) and leave its holes holes: a
    disk image is mostly holes (ext4 has no reflinks to share the rest)."""
    source_fd = os.open(source, os.O_RDONLY)
    try:
        target_fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            size = os.fstat(source_fd).st_size
            os.ftruncate(target_fd, size)
            for offset, length, has_data in _extents(source_fd, size):
                if has_data:
                    _copy_range(source_fd, target_fd, offset, length, source)
        finally:
            os.close(target_fd)
    finally:
        os.close(source_fd)


def _copy_range(source_fd: int, target_fd: int, offset: int, length: int, source: Path) -> None:
    end = offset + length
    while offset < end:
        try:
            copied = os.copy_file_range(source_fd, target_fd, end - offset, offset, offset)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            copied = os.pwrite(
                target_fd, os.pread(source_fd, min(end - offset, _CHUNK), offset), offset
            )
        if copied <= 0:
            raise BuildError(f"{source} shrank while it was copied")
        offset += copied


class FileDigests:
    """SHA-256 of release files on a small thread pool (hashlib releases the GIL), started as
    soon as a file is final so that hashing overlaps the rest of the build. Digests of files
    that stay (mkosi's split partitions, hard-linked into every release) are kept in `cache`
    by device, inode, size and mtime: a rebuild reusing mkosi's outputs does not hash them."""

    def __init__(self, cache: Path | None = None, workers: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sha256")
        self._jobs: dict[str, Future[str]] = {}
        self._cache = cache
        self._cached = self._load()

    @staticmethod
    def _identity(path: Path) -> str:
        info = path.stat()
        return f"{info.st_dev} {info.st_ino} {info.st_size} {info.st_mtime_ns}"

    def _load(self) -> dict[str, str]:
        try:
            lines = self._cache.read_text().splitlines() if self._cache else []
        except OSError:
            return {}
        return {line[65:]: line[:64] for line in lines if len(line) > 65 and line[64] == " "}

    def start(self, path: Path) -> None:
        identity = self._identity(path)
        if identity in self._jobs:
            return
        job: Future[str] = Future()
        if identity in self._cached:
            job.set_result(self._cached[identity])
        else:
            job = self._pool.submit(sha256_file, path)
        self._jobs[identity] = job

    def digest(self, path: Path) -> str:
        self.start(path)
        return self._jobs[self._identity(path)].result()

    def remember(self, paths: Iterable[Path]) -> None:
        """Keep the digests of `paths` in the cache file (for the next build)."""
        if self._cache is None:
            return
        lines = [f"{self.digest(path)} {self._identity(path)}\n" for path in paths]
        self._cache.write_text("".join(lines))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> FileDigests:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _fingerprint(keys: KeySet, role: str) -> bytes:
    der = keys.signer(role).certificate.public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).digest()


def collect_release(outputs: MkosiOutputs, stem: str, release: Path) -> list[Path]:
    """The image (copied, holes kept: the UKI is finalized into it, so mkosi's outputs stay
    reusable) and the split usr partitions (hard-linked where possible: nothing writes to them)
    in `release`, a fresh directory."""
    shutil.rmtree(release, ignore_errors=True)
    release.mkdir(parents=True)
    if not outputs.image.is_file():
        raise BuildError(f"mkosi output {outputs.image.name} is missing")
    copy_sparse(outputs.image, release / outputs.image.name)
    collected = [release / outputs.image.name]
    names = release_split_names(stem, _usr_root_hash(outputs.image))
    for suffix, name in names.items():
        source = outputs.directory / (stem + suffix)
        if not source.is_file():
            raise BuildError(f"mkosi output {source.name} is missing")
        _link_or_copy(source, release / name)
        collected.append(release / name)
    return collected


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        target.hardlink_to(source)
    except OSError:  # another file system
        shutil.copyfile(source, target)


def write_manifest(
    release: Path, files: list[Path], keys: KeySet, digests: FileDigests | None = None
) -> None:
    """SHA256SUMS of `files` (digests from `digests` where it has them), signed."""
    with FileDigests() as own:
        hashing = digests or own
        for path in files:
            hashing.start(path)
        lines = [f"{hashing.digest(path)}  {path.name}\n" for path in sorted(files)]
    manifest = "".join(lines).encode()
    (release / "SHA256SUMS").write_bytes(manifest)
    signer = keys.signer("update")
    signature = signer.sign_pkcs7_detached(manifest, include_certificate=True)
    (release / "SHA256SUMS.p7s").write_bytes(signature)
    (release / "SHA256SUMS.gpg").write_bytes(signer.sign_openpgp_detached(manifest))


def _usr_root_hash(image: Path) -> bytes:
    # Only the GPT and the signature partition are read: no need to fault in the whole image.
    with open_disk_image(image, populate=False) as disk:
        signatures = disk.partitions_of_type("usr-verity-sig")
        if len(signatures) != 1:
            raise BuildError(f"{image}: expected one usr-verity-sig partition")
        return parse_verity_sig(disk.partition_bytes(signatures[0])).root_hash


# What the firmware starts from the ESP (and measures into PCR 4 before the UKI).
BOOT_LOADER_FILE = "EFI/BOOT/BOOTX64.EFI"
REFERENCE_CERTIFICATE_ROLES = ("pk", "kek", "db", "verity", "ipe", "update")


def _boot_loader_digest(image: Path) -> bytes:
    with open_disk_image(image, populate=False) as disk:  # the ESP's boot loader only
        esps = disk.partitions_of_type("esp")
        if len(esps) != 1:
            raise BuildError(f"{image}: expected one ESP, found {len(esps)}")
        loader = FatVolume.parse(disk.partition_bytes(esps[0])).read_file(BOOT_LOADER_FILE)
    return authenticode_digest(loader)


def reference_values(
    policy: NodePolicy, image: Path, uki: Path, keys: KeySet, ipe_signed: bytes | None
) -> Reference:
    with map_file(uki) as data:
        parsed = parse_uki(data)
        uki_digest = authenticode_digest(data)
    return Reference(
        name=policy.image.name,
        version=policy.image.version,
        usr_root_hash=_usr_root_hash(image),
        certificates={role: _fingerprint(keys, role) for role in REFERENCE_CERTIFICATE_ROLES},
        uki_file=uki.name,
        uki_authenticode_sha256=uki_digest,
        uki_cmdline=parsed.cmdline or "",
        ipe_policy_sha256=hashlib.sha256(ipe_signed).digest() if ipe_signed else None,
        node_policy_sha256=bytes.fromhex(policy.digest),
        pcr11=predicted_pcr11(parsed),
        boot_loader_file=BOOT_LOADER_FILE,
        boot_loader_authenticode_sha256=_boot_loader_digest(image),
    )


def write_reference(release: Path, reference: Reference) -> Path:
    path = release / "reference.json"
    path.write_text(render_reference(reference))
    return path
