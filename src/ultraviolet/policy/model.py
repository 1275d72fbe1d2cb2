"""The validated node policy: frozen, typed, one dataclass per section of the schema.

Field names mirror `schema.FIELDS` exactly (a test keeps them in step); sizes are bytes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageSection:
    name: str
    version: str
    distribution: str
    release: str
    architecture: str
    packages: tuple[str, ...]
    extra_tree: str
    hostname: str


@dataclass(frozen=True)
class BootSection:
    cmdline: tuple[str, ...]
    initrd_modules: tuple[str, ...]
    profiles: tuple[str, ...]
    tries: int
    health_units: tuple[str, ...]
    health_checks: tuple[str, ...]
    secure_boot: bool
    secure_boot_auto_enroll: bool


@dataclass(frozen=True)
class IntegritySection:
    ipe_mode: str
    allow_boot_verified: bool
    allow_signed_verity: bool
    pinned_root_hashes: tuple[str, ...]
    kernel_modules: str
    firmware: str
    script_integrity: str
    writable_noexec: bool
    suid_allow: tuple[str, ...]
    capabilities_allow: tuple[str, ...]


@dataclass(frozen=True)
class StorageSection:
    root_filesystem: str
    root_encryption: str
    root_min_size: int
    usr_slot_size: int
    home: bool
    swap_size: int
    factory_reset: bool


@dataclass(frozen=True)
class UpdateSection:
    source: str
    instances_max: int
    verify_manifest: bool


@dataclass(frozen=True)
class WorkloadsSection:
    container_runtime: str
    allowed_images: tuple[str, ...]
    sysexts: tuple[str, ...]
    portable_services: tuple[str, ...]


@dataclass(frozen=True)
class AttestationSection:
    pcrs: tuple[int, ...]
    verifier_url: str
    banks: tuple[str, ...]
    report_interval: int
    alert_webhooks: tuple[str, ...]
    alertmanager_url: str


@dataclass(frozen=True)
class NodePolicy:
    """A node policy. `source` is where it came from; `digest` the SHA-256 of its bytes."""

    source: str
    digest: str
    image: ImageSection
    boot: BootSection
    integrity: IntegritySection
    storage: StorageSection
    update: UpdateSection
    workloads: WorkloadsSection
    attestation: AttestationSection

    @property
    def hostname(self) -> str:
        return self.image.hostname or self.image.name


SECTION_TYPES: dict[str, type] = {
    "image": ImageSection,
    "boot": BootSection,
    "integrity": IntegritySection,
    "storage": StorageSection,
    "update": UpdateSection,
    "workloads": WorkloadsSection,
    "attestation": AttestationSection,
}
