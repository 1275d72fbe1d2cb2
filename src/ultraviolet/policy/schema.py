"""The node policy as one declarative table of fields.

Every field has a section, a name, a kind, a default and a doc string; validation, `uvctl policy
explain`, docs/policy.md and the typed model all derive from this table (like mkosi's
ConfigSetting rows, without its 6,000-line module).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class Kind(enum.Enum):
    STRING = "string"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    CHOICE = "one of"
    STRING_LIST = "list of strings"
    INTEGER_LIST = "list of integers"
    SIZE = "size"  # "512M", "2G" or a number of bytes
    VERSION = "version"  # UAPI version format


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

# A check returns None when the (already type-checked) value is fine, else what was expected.
Check = Callable[[Any], str | None]


@dataclass(frozen=True)
class Field:
    section: str
    name: str
    kind: Kind
    default: Any
    doc: str
    choices: tuple[str, ...] = ()
    check: Check | None = None
    example: str = ""

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def _pattern(regex: str, what: str) -> Check:
    compiled = re.compile(regex)

    def check(value: Any) -> str | None:
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not compiled.fullmatch(item):
                return f"{what} (got {item!r})"
        return None

    return check


def _int_range(low: int, high: int) -> Check:
    def check(value: Any) -> str | None:
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not low <= item <= high:
                return f"an integer from {low} to {high} (got {item})"
        return None

    return check


_NAME = _pattern(r"[a-z0-9][a-z0-9_-]{0,62}", "lowercase letters, digits, '-' and '_'")
_HOSTNAME = _pattern(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", "a DNS host name label")
_PACKAGE = _pattern(r"[a-z0-9][a-z0-9+.-]+", "Debian package names")
_ROOT_HASH = _pattern(r"[0-9a-f]{64}", "64 lowercase hex digits (a sha256 root hash)")
_URL_OR_DIR = _pattern(r"(https?://\S+|/\S*)", "an http(s) URL or an absolute directory")
_URL = _pattern(r"https?://\S+", "an http(s) URL")
_CMDLINE = _pattern(r"[^\s\"]+", "one kernel command line word without spaces or quotes")
_IMAGE_REF = _pattern(
    r"[a-z0-9./_:-]+@sha256:[0-9a-f]{64}", "an OCI reference pinned by digest (name@sha256:HEX)"
)
_ABS_PATH = _pattern(r"/\S+", "absolute paths")
_UNIT_NAME = _pattern(
    r"[A-Za-z0-9:_.\\@-]+\.(service|socket|target|mount|path|timer)", "systemd unit names"
)
# One ExecStart= line: an absolute program path, then words; no specifiers, quotes or
# line breaks (they would mean something else to systemd).
_COMMAND = _pattern(r"/[^\s%\"'\\;]+( [^\s%\"'\\;]+)*", "a command: /absolute/program arg ...")

PCR_BANKS = ("sha1", "sha256", "sha384", "sha512")


def _module_patterns_check(value: list[str]) -> str | None:
    for pattern in value:
        if not pattern or "," in pattern or any(c.isspace() for c in pattern):
            return f"regexes without commas or spaces (got {pattern!r})"
        try:
            re.compile(pattern)
        except re.error as exc:
            return f"regexes (got {pattern!r}: {exc})"
    return None


def _banks_check(value: list[str]) -> str | None:
    unknown = [bank for bank in value if bank not in PCR_BANKS]
    if unknown or not value:
        return f"a non-empty list from {', '.join(PCR_BANKS)}"
    return None


FIELDS: tuple[Field, ...] = (
    # [image]
    Field(
        "image",
        "name",
        Kind.STRING,
        REQUIRED,
        "Image name: file names, ImageId, os-release.",
        check=_NAME,
        example='"container-host"',
    ),
    Field(
        "image",
        "version",
        Kind.VERSION,
        REQUIRED,
        "Image version (UAPI version format); every update must carry a higher one.",
        example='"1.0.0"',
    ),
    Field(
        "image",
        "distribution",
        Kind.CHOICE,
        "debian",
        "Distribution the image is built from.",
        choices=("debian",),
    ),
    Field("image", "release", Kind.CHOICE, "trixie", "Distribution release.", choices=("trixie",)),
    Field(
        "image",
        "architecture",
        Kind.CHOICE,
        "x86-64",
        "CPU architecture of the image.",
        choices=("x86-64",),
    ),
    Field(
        "image",
        "packages",
        Kind.STRING_LIST,
        [],
        "Extra packages installed into /usr.",
        check=_PACKAGE,
        example='["containerd", "runc"]',
    ),
    Field(
        "image",
        "extra_tree",
        Kind.STRING,
        "",
        "Directory (relative to the policy file) copied over the image's file system.",
    ),
    Field(
        "image",
        "hostname",
        Kind.STRING,
        "",
        "Host name; empty means the image name.",
        check=lambda v: None if v == "" else _HOSTNAME(v),
    ),
    # [boot]
    Field(
        "boot",
        "cmdline",
        Kind.STRING_LIST,
        [],
        "Kernel command line words added to every UKI profile.",
        check=_CMDLINE,
        example='["quiet"]',
    ),
    Field(
        "boot",
        "initrd_modules",
        Kind.STRING_LIST,
        [],
        "Kernel modules the initrd carries besides the storage, USB, device-mapper, file "
        "system and TPM drivers it always has: regexes searched in the module's path below "
        "/usr/lib/modules/VERSION/kernel/ (no commas). For hardware the default misses, or a "
        'NIC a network unlock needs; [".*"] keeps every module (a UKI of ~140 MB). After '
        "switch-root every module loads from /usr.",
        check=lambda v: _module_patterns_check(v),
        example='["^drivers/scsi/aic7xxx/"]',
    ),
    Field(
        "boot",
        "profiles",
        Kind.STRING_LIST,
        ["main", "ipe-enforce", "factory-reset"],
        "UKI profiles to build; main is always first.",
        check=lambda v: _profiles_check(v),
    ),
    Field(
        "boot",
        "tries",
        Kind.INTEGER,
        3,
        "Boot counting: tries of a new version before systemd-boot falls back.",
        check=_int_range(1, 16),
    ),
    Field(
        "boot",
        "health_units",
        Kind.STRING_LIST,
        [],
        "Units that must be active before a new version's trial boot counts as good "
        "(boot assessment); a failed check reboots, and after `tries` failures the previous "
        "version boots again.",
        check=_UNIT_NAME,
        example='["containerd.service"]',
    ),
    Field(
        "boot",
        "health_checks",
        Kind.STRING_LIST,
        [],
        "Commands (absolute path, then arguments) that must succeed, after health_units, "
        "before a trial boot counts as good.",
        check=_COMMAND,
        example='["/usr/bin/ctr version"]',
    ),
    Field(
        "boot",
        "secure_boot",
        Kind.BOOLEAN,
        True,
        "Sign systemd-boot and the UKIs for UEFI Secure Boot.",
    ),
    Field(
        "boot",
        "secure_boot_auto_enroll",
        Kind.BOOLEAN,
        False,
        "Let systemd-boot enroll our PK/KEK/db on first boot (virtual machines, tests).",
    ),
    # [integrity]
    Field(
        "integrity",
        "ipe_mode",
        Kind.CHOICE,
        "enforce",
        "IPE: enforce denies execution outside trusted volumes, audit only logs, off loads "
        "no policy.",
        choices=("enforce", "audit", "off"),
    ),
    Field(
        "integrity",
        "allow_boot_verified",
        Kind.BOOLEAN,
        True,
        "Allow code from the initramfs (IPE boot_verified=TRUE).",
    ),
    Field(
        "integrity",
        "allow_signed_verity",
        Kind.BOOLEAN,
        True,
        "Allow code from dm-verity volumes with a root-hash signature the kernel checked.",
    ),
    Field(
        "integrity",
        "pinned_root_hashes",
        Kind.STRING_LIST,
        [],
        "Extra dm-verity root hashes (sysext/portable images) allowed to execute.",
        check=_ROOT_HASH,
    ),
    Field(
        "integrity",
        "kernel_modules",
        Kind.CHOICE,
        "trusted",
        "Kernel modules: only from trusted volumes/initramfs, or any.",
        choices=("trusted", "any"),
    ),
    Field(
        "integrity",
        "firmware",
        Kind.CHOICE,
        "trusted",
        "Firmware files: only from trusted volumes/initramfs, or any.",
        choices=("trusted", "any"),
    ),
    Field(
        "integrity",
        "script_integrity",
        Kind.CHOICE,
        "off",
        "Interpreter script checks (AT_EXECVE_CHECK, needs kernel >= 6.14).",
        choices=("off", "audit", "enforce"),
    ),
    Field(
        "integrity", "writable_noexec", Kind.BOOLEAN, True, "W^X: every writable mount is noexec."
    ),
    Field(
        "integrity",
        "suid_allow",
        Kind.STRING_LIST,
        [],
        "Paths in /usr allowed to keep SUID/SGID bits: a package of image.packages installing "
        "any other fails the build before mkosi runs; the base system's are stripped.",
        check=_ABS_PATH,
    ),
    Field(
        "integrity",
        "capabilities_allow",
        Kind.STRING_LIST,
        [],
        "Paths in /usr allowed to carry file capabilities.",
        check=_ABS_PATH,
    ),
    # [storage]
    Field(
        "storage",
        "root_filesystem",
        Kind.CHOICE,
        "ext4",
        "File system of the root partition.",
        choices=("ext4", "btrfs"),
    ),
    Field(
        "storage",
        "root_encryption",
        Kind.CHOICE,
        "tpm2",
        "Root encryption: LUKS2 bound to the TPM2, or none.",
        choices=("tpm2", "off"),
    ),
    Field("storage", "root_min_size", Kind.SIZE, "1G", "Minimum size of the root partition."),
    Field("storage", "usr_slot_size", Kind.SIZE, "1G", "Size of each usr A/B slot."),
    Field("storage", "home", Kind.BOOLEAN, False, "Create a separate /home partition."),
    Field("storage", "swap_size", Kind.SIZE, "0", "Size of a swap partition (0 = none)."),
    Field(
        "storage",
        "factory_reset",
        Kind.BOOLEAN,
        True,
        "Root, home and swap are wiped by a factory reset (FactoryReset=yes).",
    ),
    # [update]
    Field(
        "update",
        "source",
        Kind.STRING,
        "",
        "Where sysupdate fetches releases: an http(s) URL or a local directory.",
        check=lambda v: None if v == "" else _URL_OR_DIR(v),
    ),
    Field(
        "update",
        "instances_max",
        Kind.INTEGER,
        2,
        "How many versions sysupdate keeps installed.",
        check=_int_range(2, 8),
    ),
    Field(
        "update",
        "verify_manifest",
        Kind.BOOLEAN,
        True,
        "Require a signed SHA256SUMS manifest for updates.",
    ),
    # [workloads]
    Field(
        "workloads",
        "container_runtime",
        Kind.CHOICE,
        "containerd",
        "Container runtime shipped in /usr.",
        choices=("containerd", "none"),
    ),
    Field(
        "workloads",
        "allowed_images",
        Kind.STRING_LIST,
        [],
        "OCI images allowed to run, pinned by digest.",
        check=_IMAGE_REF,
    ),
    Field(
        "workloads",
        "sysexts",
        Kind.STRING_LIST,
        [],
        "System extension images to include (paths relative to the policy file).",
    ),
    Field(
        "workloads",
        "portable_services",
        Kind.STRING_LIST,
        [],
        "Portable service images to include (paths relative to the policy file).",
    ),
    # [attestation]
    Field(
        "attestation",
        "pcrs",
        Kind.INTEGER_LIST,
        [0, 2, 4, 7, 11, 12, 13, 15],
        "PCRs the node quotes and the verifier checks.",
        check=_int_range(0, 23),
    ),
    Field(
        "attestation",
        "verifier_url",
        Kind.STRING,
        "",
        "Verifier service the node agent reports to.",
        check=lambda v: None if v == "" else _URL(v),
    ),
    Field(
        "attestation",
        "banks",
        Kind.STRING_LIST,
        ["sha256"],
        "PCR banks the node agent quotes.",
        check=_banks_check,
    ),
    Field(
        "attestation",
        "report_interval",
        Kind.INTEGER,
        300,
        "Seconds between the node agent's reports (each +-10% jitter).",
        check=_int_range(5, 86400),
    ),
    Field(
        "attestation",
        "alert_webhooks",
        Kind.STRING_LIST,
        [],
        "Webhook URLs that receive alerts.",
        check=_URL,
    ),
    Field(
        "attestation",
        "alertmanager_url",
        Kind.STRING,
        "",
        "Prometheus Alertmanager base URL for alerts.",
        check=lambda v: None if v == "" else _URL(v),
    ),
)

PROFILES = ("main", "ipe-enforce", "factory-reset")


def _profiles_check(value: list[str]) -> str | None:
    unknown = [p for p in value if p not in PROFILES]
    if unknown:
        return f"profiles from {', '.join(PROFILES)} (got {', '.join(unknown)})"
    if not value or value[0] != "main":
        return "a list starting with 'main'"
    if len(set(value)) != len(value):
        return "each profile once"
    return None


SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(f.section for f in FIELDS))
SECTION_DOCS: dict[str, str] = {
    "image": "What the image is and what goes into /usr.",
    "boot": "Boot chain: UKI command line, profiles, boot counting, Secure Boot.",
    "integrity": "What may execute (IPE) and the universal truths applied to the image.",
    "storage": "The first-boot partition layout created by systemd-repart.",
    "update": "A/B updates with systemd-sysupdate.",
    "workloads": "Container runtime and the signed workloads a node may run.",
    "attestation": "Measured boot: what is quoted, where it is checked, where alerts go.",
}


def fields_of(section: str) -> tuple[Field, ...]:
    return tuple(f for f in FIELDS if f.section == section)
