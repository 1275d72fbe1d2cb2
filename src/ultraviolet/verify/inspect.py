"""`uvctl inspect`: what a disk image holds, as one JSON-able structure (text rendering too).

Pure reading with formats/: partitions, verity superblocks and tree status, verity-sig contents,
the ESP's boot loader and UKIs. Inspect never fails on a broken link: it shows what it found and
records per-item errors; only an unreadable GPT makes the whole inspection fail.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509

from ultraviolet.diskimage import HASH_WORKERS, DiskImage, open_disk_image, uki_paths
from ultraviolet.errors import FormatError
from ultraviolet.formats.bls import BootEntryName
from ultraviolet.formats.fat import FatVolume
from ultraviolet.formats.gpt import GptPartition, root_hash_partition_uuids
from ultraviolet.formats.uki import parse_uki
from ultraviolet.formats.verity import VeritySuperblock, verify_hash_device
from ultraviolet.formats.veritysig import parse_verity_sig, verify_verity_sig
from ultraviolet.verify.chain import BOOTLOADER_PATHS

OS_RELEASE_KEYS = ("ID", "VERSION_ID", "PRETTY_NAME", "IMAGE_ID", "IMAGE_VERSION")


def inspect_image(path: Path, trusted: Sequence[x509.Certificate] = ()) -> dict[str, Any]:
    with open_disk_image(path) as image:
        root_hashes = _signed_root_hashes(image)
        return {
            "file": str(path),
            "size": len(image.data),
            "sector_size": image.gpt.sector_size,
            "disk_guid": str(image.gpt.disk_guid),
            "gpt_backup": image.gpt.backup_error or "ok",
            "partitions": [_partition_info(p) for p in image.gpt.partitions],
            "verity_signatures": _verity_sig_info(image, trusted),
            "verity": _verity_info(image, root_hashes),
            "esp": _esp_info(image),
        }


def _partition_info(partition: GptPartition) -> dict[str, Any]:
    kind = partition.type
    return {
        "number": partition.number,
        "type": kind.name if kind else None,
        "architecture": kind.arch if kind else None,
        "type_uuid": str(partition.type_uuid),
        "uuid": str(partition.uuid),
        "label": partition.label,
        "start": partition.start,
        "size": partition.size,
        "flags": list(partition.flags),
    }


def _signed_root_hashes(image: DiskImage) -> dict[str, bytes]:
    """verity partition UUID -> root hash named by a parseable verity-sig partition."""
    hashes: dict[str, bytes] = {}
    for partition in image.partitions_of_type("usr-verity-sig"):
        try:
            signature = parse_verity_sig(image.partition_bytes(partition))
        except FormatError:
            continue
        _, verity_uuid = root_hash_partition_uuids(signature.root_hash)
        hashes[str(verity_uuid)] = signature.root_hash
    return hashes


def _verity_sig_info(image: DiskImage, trusted: Sequence[x509.Certificate]) -> list[dict[str, Any]]:
    infos: list[dict[str, Any]] = []
    for partition in image.partitions_of_type("usr-verity-sig"):
        info: dict[str, Any] = {"partition": partition.number, "label": partition.label}
        try:
            signature = parse_verity_sig(image.partition_bytes(partition))
        except FormatError as exc:
            info["error"] = str(exc)
            infos.append(info)
            continue
        info["root_hash"] = signature.root_hash.hex()
        info["certificate_fingerprint"] = signature.certificate_fingerprint.hex()
        if trusted:
            check = verify_verity_sig(signature, trusted)
            info["signature_verified"] = check.ok
            if not check.ok:
                info["signature_problem"] = check.reason
        else:
            info["signature_verified"] = None  # no --trust given: not checked
        infos.append(info)
    return infos


def _verity_info(image: DiskImage, root_hashes: dict[str, bytes]) -> list[dict[str, Any]]:
    infos: list[dict[str, Any]] = []
    for verity in image.partitions_of_type("usr-verity"):
        info: dict[str, Any] = {"partition": verity.number, "label": verity.label}
        hash_device = image.partition_bytes(verity)
        try:
            superblock = VeritySuperblock.parse(hash_device, base=verity.start)
        except FormatError as exc:
            info["error"] = str(exc)
            infos.append(info)
            continue
        info["superblock"] = {
            "version": superblock.version,
            "hash_type": superblock.hash_type,
            "uuid": str(superblock.uuid),
            "algorithm": superblock.algorithm,
            "data_block_size": superblock.data_block_size,
            "hash_block_size": superblock.hash_block_size,
            "data_blocks": superblock.data_blocks,
            "salt": superblock.salt.hex(),
        }
        root_hash = root_hashes.get(str(verity.uuid))
        info["root_hash"] = root_hash.hex() if root_hash else None
        info["data_matches_tree"] = _data_matches(image, verity, root_hash)
        infos.append(info)
    return infos


def _data_matches(image: DiskImage, verity: GptPartition, root_hash: bytes | None) -> Any:
    if root_hash is None:
        return None
    data_uuid, _ = root_hash_partition_uuids(root_hash)
    data = [p for p in image.partitions_of_type("usr") if p.uuid == data_uuid]
    if not data:
        return None
    try:
        check = verify_hash_device(
            image.partition_bytes(data[0]),
            image.partition_bytes(verity),
            root_hash,
            workers=HASH_WORKERS,
        )
    except FormatError as exc:
        return str(exc)
    return True if check.ok else check.message


def _esp_info(image: DiskImage) -> dict[str, Any] | None:
    esps = image.partitions_of_type("esp")
    if not esps:
        return None
    esp = esps[0]
    try:
        volume = FatVolume.parse(image.partition_bytes(esp), base=esp.start)
    except FormatError as exc:
        return {"partition": esp.number, "error": str(exc)}
    ukis = [_uki_info(path, volume.read_file(path)) for path in uki_paths(volume)]
    return {
        "partition": esp.number,
        "boot_loader": [p for p in BOOTLOADER_PATHS if volume.exists(p)],
        "files": [path for path, entry in volume.walk() if not entry.is_dir],
        "ukis": ukis,
    }


def _uki_info(path: str, data: bytes) -> dict[str, Any]:
    info: dict[str, Any] = {"path": path, "size": len(data)}
    try:
        name = BootEntryName.parse(path.rsplit("/", 1)[-1])
        info["boot_counter"] = (
            None
            if name.tries_left is None
            else {"tries_left": name.tries_left, "tries_done": name.tries_done}
        )
    except FormatError as exc:
        info["boot_counter"] = str(exc)
    try:
        uki = parse_uki(data)
    except FormatError as exc:
        info["error"] = str(exc)
        return info
    info["sections"] = [{"name": s.name, "size": s.size} for s in uki.sections]
    info["cmdline"] = uki.cmdline
    info["usrhash"] = uki.usrhash
    info["uname"] = uki.uname
    info["os_release"] = {k: v for k, v in uki.os_release.items() if k in OS_RELEASE_KEYS}
    info["profiles"] = len(uki.profiles)
    return info


def render_text(info: dict[str, Any]) -> str:
    lines = [
        f"{info['file']}: {info['size']} bytes, sector size {info['sector_size']}, "
        f"disk {info['disk_guid']}, backup GPT {info['gpt_backup']}",
        "Partitions:",
    ]
    for p in info["partitions"]:
        flags = f" [{','.join(p['flags'])}]" if p["flags"] else ""
        kind = p["type"] or p["type_uuid"]
        lines.append(
            f"  {p['number']:>2} {kind:<16} {p['uuid']} start {p['start']:>11} size "
            f"{p['size']:>11} {p['label']!r}{flags}"
        )
    for sig in info["verity_signatures"]:
        verified = {True: "verified", False: "NOT verified", None: "not checked (no --trust)"}
        status = sig.get("error") or verified[sig["signature_verified"]]
        lines.append(f"verity-sig {sig['label']!r}: root hash {sig.get('root_hash')} ({status})")
    for verity in info["verity"]:
        lines.append(
            f"verity {verity['label']!r}: data matches tree: {verity.get('data_matches_tree')}"
        )
    lines.extend(_render_esp(info["esp"]))
    return "\n".join(lines)


def _render_esp(esp: dict[str, Any] | None) -> list[str]:
    if esp is None:
        return ["ESP: none"]
    if "error" in esp:
        return [f"ESP: {esp['error']}"]
    lines = [f"ESP: boot loader {', '.join(esp['boot_loader']) or 'none'}"]
    for uki in esp["ukis"]:
        lines.append(f"  UKI {uki['path']} ({uki['size']} bytes)")
        if "error" in uki:
            lines.append(f"    error: {uki['error']}")
            continue
        lines.append("    sections: " + " ".join(s["name"] for s in uki["sections"]))
        lines.append(f"    cmdline: {uki['cmdline']}")
        lines.append(f"    uname: {uki['uname']}  os: {uki['os_release'].get('PRETTY_NAME')}")
        lines.append(f"    boot counter: {uki['boot_counter']}")
    return lines
