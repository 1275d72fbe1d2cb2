"""The release directory of a build and its reference values (reference.json).

release/NAME_VERSION.raw                 whole disk image
release/NAME_VERSION.efi                 signed UKI
release/NAME_VERSION.usr*.raw            split partitions for sysupdate
release/SHA256SUMS, SHA256SUMS.p7s/.gpg  manifest, signed with the update key (PKCS#7; OpenPGP
                                         for systemd-sysupdate's Verify=yes)
release/reference.json                   what a node running this release must show
"""

from __future__ import annotations

import hashlib
import shutil
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


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fingerprint(keys: KeySet, role: str) -> bytes:
    der = keys.signer(role).certificate.public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).digest()


def collect_release(outputs: MkosiOutputs, stem: str, release: Path) -> list[Path]:
    """The image (copied: the UKI is finalized into it, so mkosi's outputs stay reusable) and
    the split usr partitions (hard-linked where possible: nothing writes to them) in `release`,
    a fresh directory."""
    shutil.rmtree(release, ignore_errors=True)
    release.mkdir(parents=True)
    if not outputs.image.is_file():
        raise BuildError(f"mkosi output {outputs.image.name} is missing")
    shutil.copyfile(outputs.image, release / outputs.image.name)
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


def write_manifest(release: Path, files: list[Path], keys: KeySet) -> None:
    lines = [f"{_sha256_file(path)}  {path.name}\n" for path in sorted(files)]
    manifest = "".join(lines).encode()
    (release / "SHA256SUMS").write_bytes(manifest)
    signer = keys.signer("update")
    signature = signer.sign_pkcs7_detached(manifest, include_certificate=True)
    (release / "SHA256SUMS.p7s").write_bytes(signature)
    (release / "SHA256SUMS.gpg").write_bytes(signer.sign_openpgp_detached(manifest))


def _usr_root_hash(image: Path) -> bytes:
    with open_disk_image(image) as disk:
        signatures = disk.partitions_of_type("usr-verity-sig")
        if len(signatures) != 1:
            raise BuildError(f"{image}: expected one usr-verity-sig partition")
        return parse_verity_sig(disk.partition_bytes(signatures[0])).root_hash


# What the firmware starts from the ESP (and measures into PCR 4 before the UKI).
BOOT_LOADER_FILE = "EFI/BOOT/BOOTX64.EFI"
REFERENCE_CERTIFICATE_ROLES = ("pk", "kek", "db", "verity", "ipe", "update")


def _boot_loader_digest(image: Path) -> bytes:
    with open_disk_image(image) as disk:
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
