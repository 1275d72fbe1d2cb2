"""The release directory of a build and its reference values (reference.json).

release/NAME_VERSION.raw                 whole disk image
release/NAME_VERSION.efi                 signed UKI
release/NAME_VERSION.usr*.raw            split partitions for sysupdate
release/SHA256SUMS, SHA256SUMS.p7s       manifest, PKCS#7-signed with the update key
release/reference.json                   what a node running this release must show
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from ultraviolet.build.keyset import KeySet
from ultraviolet.build.mkosi import MkosiOutputs
from ultraviolet.diskimage import map_file, open_disk_image
from ultraviolet.errors import BuildError
from ultraviolet.formats.authenticode import authenticode_digest
from ultraviolet.formats.pcr import predict_pcr11
from ultraviolet.formats.uki import parse_uki
from ultraviolet.formats.veritysig import parse_verity_sig
from ultraviolet.policy.model import NodePolicy

SPLIT_SUFFIXES = (".usr.raw", ".usr-verity.raw", ".usr-verity-sig.raw")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fingerprint(keys: KeySet, role: str) -> str:
    der = keys.signer(role).certificate.public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def collect_release(outputs: MkosiOutputs, stem: str, release: Path) -> list[Path]:
    """Copy the image, UKI and split usr partitions into `release`."""
    release.mkdir(parents=True, exist_ok=True)
    wanted = [outputs.image, *(outputs.directory / (stem + s) for s in SPLIT_SUFFIXES)]
    if outputs.uki is None:
        raise BuildError(f"mkosi produced no UKI in {outputs.directory}")
    wanted.append(outputs.uki)
    copied = []
    for path in wanted:
        if not path.is_file():
            raise BuildError(f"mkosi output {path.name} is missing")
        target = release / path.name
        shutil.copyfile(path, target)
        copied.append(target)
    return copied


def write_manifest(release: Path, files: list[Path], keys: KeySet) -> None:
    lines = [f"{_sha256_file(path)}  {path.name}\n" for path in sorted(files)]
    manifest = "".join(lines).encode()
    (release / "SHA256SUMS").write_bytes(manifest)
    signature = keys.signer("update").sign_pkcs7_detached(manifest, include_certificate=True)
    (release / "SHA256SUMS.p7s").write_bytes(signature)


def _usr_root_hash(image: Path) -> str:
    with open_disk_image(image) as disk:
        signatures = disk.partitions_of_type("usr-verity-sig")
        if len(signatures) != 1:
            raise BuildError(f"{image}: expected one usr-verity-sig partition")
        return parse_verity_sig(disk.partition_bytes(signatures[0])).root_hash.hex()


def reference_values(
    policy: NodePolicy, image: Path, uki: Path, keys: KeySet, ipe_signed: bytes | None
) -> dict[str, Any]:
    with map_file(uki) as data:
        parsed = parse_uki(data)
        phases = {"main": predict_pcr11(parsed)}
        for profile in parsed.profiles:
            phases[profile.id or f"profile-{profile.number}"] = predict_pcr11(
                parsed, profile=profile.number
            )
        uki_digest = authenticode_digest(data)
    return {
        "image": {"name": policy.image.name, "version": policy.image.version},
        "usr_root_hash": _usr_root_hash(image),
        "certificates": {
            role: _fingerprint(keys, role) for role in ("db", "verity", "ipe", "update")
        },
        "uki": {
            "file": uki.name,
            "authenticode_sha256": uki_digest.hex(),
            "cmdline": parsed.cmdline,
        },
        "ipe_policy_sha256": hashlib.sha256(ipe_signed).hexdigest() if ipe_signed else None,
        "node_policy_sha256": policy.digest,
        "pcr11": {
            profile: {phase: value.hex() for phase, value in values.items()}
            for profile, values in phases.items()
        },
    }


def write_reference(release: Path, reference: dict[str, Any]) -> Path:
    path = release / "reference.json"
    path.write_text(json.dumps(reference, indent=2) + "\n")
    return path
