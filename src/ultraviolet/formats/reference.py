"""reference.json: what a node running one release must show (written by the build, read by
`uvctl verify --reference` and, later, by the attestation verifier).

{
  "format": 2,
  "image": {"name": "...", "version": "..."},
  "usr_root_hash": "<hex>",
  "certificates": {"pk": "<sha256 of DER>", "kek": ..., "db": ..., "verity": ..., ...},
  "boot_loader": {"file": "EFI/BOOT/BOOTX64.EFI", "authenticode_sha256": "<hex>"},
  "uki": {"file": "NAME_VERSION.efi", "authenticode_sha256": "<hex>", "cmdline": "..."},
  "ipe_policy_sha256": "<hex>" | null,
  "node_policy_sha256": "<hex>",
  "pcr11": {"<profile>": {"<phase path>": "<hex>", ...}, ...}
}

Parsing is strict (unknown keys, wrong types and malformed hex are errors naming the key):
a reference that silently lost a field would make a check pass that should not run.

Format 2 added what the attestation verifier checks PCR 4 and 7 against: the systemd-boot
Authenticode digest ("boot_loader") and the PK and KEK fingerprints (required in format 2).
Format 1 documents (releases built before) still parse, without them; the verifier refuses them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ultraviolet.errors import FormatError

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
SECURE_BOOT_ROLES = ("pk", "kek", "db")  # required in format 2
_HEX = re.compile(r"(?:[0-9a-f]{2})+")
_DIGEST_HEX_LENGTHS = (40, 64, 96, 128)  # sha1/sha256/sha384/sha512 PCR banks


class ReferenceError(FormatError):
    pass


@dataclass(frozen=True)
class Reference:
    name: str
    version: str
    usr_root_hash: bytes
    certificates: Mapping[str, bytes]  # role -> SHA-256 fingerprint of the DER certificate
    uki_file: str
    uki_authenticode_sha256: bytes
    uki_cmdline: str
    ipe_policy_sha256: bytes | None
    node_policy_sha256: bytes
    pcr11: Mapping[str, Mapping[str, bytes]]  # profile -> boot phase path -> PCR value
    # Format 2: the ESP's systemd-boot (what the firmware measures into PCR 4 before the UKI).
    boot_loader_file: str | None = None
    boot_loader_authenticode_sha256: bytes | None = None

    @property
    def format(self) -> int:
        """1 for a reference without the boot loader (and PK/KEK), else 2."""
        return 1 if self.boot_loader_authenticode_sha256 is None else FORMAT_VERSION


def render_reference(reference: Reference) -> str:
    document: dict[str, Any] = {
        "format": reference.format,
        "image": {"name": reference.name, "version": reference.version},
        "usr_root_hash": reference.usr_root_hash.hex(),
        "certificates": {role: fp.hex() for role, fp in reference.certificates.items()},
        "uki": {
            "file": reference.uki_file,
            "authenticode_sha256": reference.uki_authenticode_sha256.hex(),
            "cmdline": reference.uki_cmdline,
        },
        "ipe_policy_sha256": (
            reference.ipe_policy_sha256.hex() if reference.ipe_policy_sha256 else None
        ),
        "node_policy_sha256": reference.node_policy_sha256.hex(),
        "pcr11": {
            profile: {phase: value.hex() for phase, value in phases.items()}
            for profile, phases in reference.pcr11.items()
        },
    }
    if reference.boot_loader_authenticode_sha256 is not None:
        document["boot_loader"] = {
            "file": reference.boot_loader_file or "",
            "authenticode_sha256": reference.boot_loader_authenticode_sha256.hex(),
        }
    return json.dumps(document, indent=2) + "\n"


def parse_reference(data: bytes) -> Reference:
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        position = getattr(exc, "pos", None)
        raise ReferenceError("reference.json", f"not JSON: {exc}", position) from None
    top = _Object(document, "reference.json")
    version = top.get("format", int)
    if version not in READABLE_FORMATS:
        raise ReferenceError(
            "reference.json", f"format must be {' or '.join(map(str, READABLE_FORMATS))}"
        )
    image = top.object("image")
    uki = top.object("uki")
    ipe = top.raw("ipe_policy_sha256")
    reference = Reference(
        name=image.get("name", str),
        version=image.get("version", str),
        usr_root_hash=top.hex("usr_root_hash", (64,)),
        certificates=_certificates(top.object("certificates"), version),
        uki_file=uki.get("file", str),
        uki_authenticode_sha256=uki.hex("authenticode_sha256", (64,)),
        uki_cmdline=uki.get("cmdline", str),
        ipe_policy_sha256=None if ipe is None else top.hex("ipe_policy_sha256", (64,)),
        node_policy_sha256=top.hex("node_policy_sha256", (64,)),
        pcr11=_pcr11(top.object("pcr11")),
    )
    sections = [top, image, uki]
    if version >= 2:
        boot_loader = top.object("boot_loader")
        reference = replace(
            reference,
            boot_loader_file=boot_loader.get("file", str),
            boot_loader_authenticode_sha256=boot_loader.hex("authenticode_sha256", (64,)),
        )
        sections.append(boot_loader)
    for section in sections:
        section.no_unknown_keys()
    return reference


def _certificates(section: _Object, version: int) -> dict[str, bytes]:
    certificates = {role: section.hex(role, (64,)) for role in section.members()}
    missing = [role for role in SECURE_BOOT_ROLES if role not in certificates]
    if version >= 2 and missing:
        raise ReferenceError(section.where, f"missing key(s): {', '.join(missing)}")
    return certificates


def _pcr11(section: _Object) -> dict[str, dict[str, bytes]]:
    profiles: dict[str, dict[str, bytes]] = {}
    for profile in section.members():
        phases = section.object(profile)
        profiles[profile] = {
            phase: phases.hex(phase, _DIGEST_HEX_LENGTHS) for phase in phases.members()
        }
    if not profiles:
        raise ReferenceError("reference.json: pcr11", "no profile")
    return profiles


class _Object:
    """A JSON object being read: typed access by key, errors naming the key's path."""

    def __init__(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise ReferenceError(where, f"expected an object, got {type(value).__name__}")
        self.value: dict[str, Any] = value
        self.where = where
        self.seen: set[str] = set()

    def members(self) -> list[str]:
        self.seen.update(self.value)
        return list(self.value)

    def raw(self, key: str) -> Any:
        if key not in self.value:
            raise ReferenceError(self.where, f"missing key {key!r}")
        self.seen.add(key)
        return self.value[key]

    def get(self, key: str, kind: type[Any]) -> Any:
        value = self.raw(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ReferenceError(
                f"{self.where}.{key}", f"expected {kind.__name__}, got {type(value).__name__}"
            )
        return value

    def object(self, key: str) -> _Object:
        return _Object(self.raw(key), f"{self.where}.{key}")

    def hex(self, key: str, lengths: tuple[int, ...]) -> bytes:
        value = self.get(key, str)
        if len(value) not in lengths or not _HEX.fullmatch(value):
            wanted = " or ".join(str(n) for n in lengths)
            raise ReferenceError(f"{self.where}.{key}", f"expected {wanted} lowercase hex digits")
        return bytes.fromhex(value)

    def no_unknown_keys(self) -> None:
        unknown = sorted(set(self.value) - self.seen)
        if unknown:
            raise ReferenceError(self.where, f"unknown key(s): {', '.join(unknown)}")
