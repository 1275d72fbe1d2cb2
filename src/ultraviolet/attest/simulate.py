"""A simulated node for tests and benchmarks of the verifier (no TPM, no VM).

`synthetic_release` makes a release's reference values from a synthetic multi-profile UKI;
`boot_measurements` writes the logs a UEFI Secure Boot machine (OVMF-like firmware, then
systemd-boot, systemd-stub and systemd-pcrphase) produces booting it; `SoftwareTpm` extends
those measurements and quotes them with an RSA attestation key held in memory, signing
TPMS_ATTEST exactly as a TPM's restricted RSASSA key does. The swtpm tier (tests/attest)
extends the same logs into a real software TPM.
"""

from __future__ import annotations

import datetime
import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from ultraviolet.formats import efivar
from ultraviolet.formats import eventlog as ev
from ultraviolet.formats import pcr as pcr_math
from ultraviolet.formats.eventlog_write import (
    EventRecord,
    image_load_data,
    measured,
    startup_locality,
    tagged_event_data,
    userspace_record,
    utf16,
    write_event_log,
)
from ultraviolet.formats.evidence import Evidence, IpeEvent
from ultraviolet.formats.reference import Reference
from ultraviolet.formats.tpm import (
    AK_ATTRIBUTES,
    ALG_ECC,
    ALG_ECDSA,
    ALG_NULL,
    ALG_RSA,
    ALG_RSASSA,
    ALG_SHA256,
    RH_ENDORSEMENT,
    ST_ATTEST_QUOTE,
    Attest,
    ClockInfo,
    EccParameters,
    PcrSelection,
    PublicArea,
    QuoteInfo,
    RsaParameters,
    Scheme,
    Signature,
    SymmetricDefinition,
    qualified_name,
    quote_pcr_digest,
)
from ultraviolet.formats.uki import SECTION_ORDER, Uki, UkiProfile, UkiSection

BANKS = ("sha1", "sha256")  # what OVMF with swtpm logs and extends
OWNER = uuid.UUID("7d4a2f7e-0b4c-4d57-9a47-6c7f9e0e1a55")  # SignatureOwner of our entries
LOADER_CONF_TAG = 0xF5BC582A
ECC_NIST_P256 = 0x0003
SIMULATED_PCRS = (0, 1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 15)


def _certificate(name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class SecureBootKeys:
    """DER certificates of PK, KEK and db."""

    pk: bytes
    kek: bytes
    db: bytes

    @classmethod
    def generate(cls, organisation: str = "Simulated") -> SecureBootKeys:
        return cls(*(_certificate(f"{organisation} {role}") for role in ("PK", "KEK", "db")))

    def fingerprints(self) -> dict[str, bytes]:
        return {role: hashlib.sha256(getattr(self, role)).digest() for role in ("pk", "kek", "db")}


@dataclass(frozen=True)
class SimulatedRelease:
    reference: Reference
    uki: Uki
    keys: SecureBootKeys


def _section(name: str, data: bytes) -> UkiSection:
    return UkiSection(name, data, 0, 0)


def _synthetic_uki(name: str, version: str) -> Uki:
    seed = f"{name} {version}".encode()
    base = {
        ".linux": _section(".linux", hashlib.sha512(seed + b"kernel").digest() * 64),
        ".osrel": _section(".osrel", f'ID={name}\nVERSION_ID="{version}"\n'.encode()),
        ".cmdline": _section(".cmdline", b"usrhash=" + hashlib.sha256(seed).hexdigest().encode()),
        ".initrd": _section(".initrd", hashlib.sha512(seed + b"initrd").digest() * 32),
        ".uname": _section(".uname", b"6.12.0-amd64"),
        ".sbat": _section(".sbat", b"sbat,1,SBAT Version,sbat,1\n"),
    }
    profiles = tuple(
        UkiProfile(number, {**base, ".profile": _section(".profile", f"ID={pid}\n".encode())})
        for number, pid in enumerate(("main", "factory-reset"))
    )
    return Uki(tuple(base.values()), base, profiles)


def synthetic_release(name: str, version: str, keys: SecureBootKeys) -> SimulatedRelease:
    """Reference values of a release whose UKI has two profiles (main, factory-reset)."""
    uki = _synthetic_uki(name, version)
    seed = f"{name} {version}".encode()
    reference = Reference(
        name=name,
        version=version,
        usr_root_hash=hashlib.sha256(seed + b"usr").digest(),
        certificates={**keys.fingerprints(), "update": hashlib.sha256(b"update").digest()},
        uki_file=f"{name}_{version}.efi",
        uki_authenticode_sha256=hashlib.sha256(seed + b"uki authenticode").digest(),
        uki_cmdline=uki.cmdline or "",
        ipe_policy_sha256=None,
        node_policy_sha256=hashlib.sha256(seed + b"policy").digest(),
        pcr11={
            profile.id or str(profile.number): pcr_math.predict_pcr11(uki, profile=profile.number)
            for profile in uki.profiles
        },
        boot_loader_file="EFI/BOOT/BOOTX64.EFI",
        boot_loader_authenticode_sha256=hashlib.sha256(b"systemd-boot 257").digest(),
    )
    return SimulatedRelease(reference, uki, keys)


# The measured boot.


@dataclass(frozen=True)
class Boot:
    """What one boot measured: the firmware log's records and the userspace log."""

    firmware: tuple[EventRecord, ...]
    userspace: bytes
    banks: tuple[str, ...] = BANKS

    @property
    def firmware_log(self) -> bytes:
        return write_event_log(self.firmware, self.banks)

    def extends(self) -> list[tuple[int, dict[str, bytes]]]:
        """Every (PCR, digests) extended, in order: firmware first, then userspace."""
        steps = [(r.pcr, dict(r.digests)) for r in self.firmware if r.event_type != ev.EV_NO_ACTION]
        for event in ev.parse_userspace_log(self.userspace):
            if event.pcr is not None:
                steps.append((event.pcr, dict(event.digests)))
        return steps


def _variable(pcr: int, kind: int, vendor: uuid.UUID, name: str, data: bytes) -> EventRecord:
    return measured(pcr, kind, efivar.uefi_variable_data(vendor, name, data), BANKS)


def _platform_events(machine: int) -> list[EventRecord]:
    records = [
        startup_locality(0, BANKS),
        measured(0, ev.EV_S_CRTM_VERSION, utf16("edk2-stable202502"), BANKS),
    ]
    for number in range(3):  # firmware volumes
        data = (0xFFC84000 + number * 0x10000).to_bytes(8, "little") + (0x10000).to_bytes(
            8, "little"
        )
        records.append(measured(0, 0x80000008, data, BANKS, digest_of=b"FV%d" % number))
    for table in (b"ACPI DATA", b"ACPI DATA", b"SMBIOS"):
        records.append(measured(0, ev.EV_POST_CODE, table, BANKS, digest_of=table + b" table"))
    handoff = utf16("SmbiosTable") + bytes(8)
    records.append(measured(1, 0x8000000B, handoff, BANKS, digest_of=b"SMBIOS structures"))
    records.append(measured(1, 0x8000000A, b"\x00" * 16, BANKS, digest_of=b"platform config"))
    for number in range(4):  # option ROMs
        image = image_load_data(0x7E000000 + number * 0x20000, 0x20000)
        records.append(measured(2, ev.EV_EFI_BOOT_SERVICES_DRIVER, image, BANKS, b"rom%d" % number))
    variable = ev.EV_EFI_VARIABLE_BOOT
    order = b"".join(n.to_bytes(2, "little") for n in range(6))
    records.append(_variable(1, variable, efivar.EFI_GLOBAL_VARIABLE, "BootOrder", order))
    for number in range(6):
        option = utf16(f"UEFI Boot Option {number} of machine {machine}") + bytes(12)
        name = f"Boot{number:04X}"
        records.append(_variable(1, variable, efivar.EFI_GLOBAL_VARIABLE, name, option))
    return records


def _secure_boot_events(keys: SecureBootKeys, secure_boot: bool) -> list[EventRecord]:
    config = ev.EV_EFI_VARIABLE_DRIVER_CONFIG
    glob, database = efivar.EFI_GLOBAL_VARIABLE, efivar.EFI_IMAGE_SECURITY_DATABASE
    return [
        _variable(7, config, glob, "SecureBoot", b"\x01" if secure_boot else b"\x00"),
        _variable(7, config, glob, "PK", efivar.x509_signature_list([keys.pk], OWNER)),
        _variable(7, config, glob, "KEK", efivar.x509_signature_list([keys.kek], OWNER)),
        _variable(7, config, database, "db", efivar.x509_signature_list([keys.db], OWNER)),
        _variable(7, config, database, "dbx", b""),
    ]


def _stub_events(uki: Uki, profile: int) -> list[EventRecord]:
    """systemd-stub: per measured section, H(name NUL) then H(contents), described as EV_IPL."""
    sections = uki.profiles[profile].sections
    records = []
    for name in SECTION_ORDER:
        section = sections.get(name)
        if section is None or name in pcr_math.UNMEASURED or not section.data:
            continue
        label = utf16(name)
        records.append(measured(11, ev.EV_IPL, label, BANKS, digest_of=name.encode() + b"\0"))
        records.append(measured(11, ev.EV_IPL, label, BANKS, digest_of=section.data))
    return records


def boot_measurements(
    release: SimulatedRelease,
    *,
    profile: int = 0,
    secure_boot: bool = True,
    boot_loader: bytes | None = None,
    uki: bytes | None = None,
    machine: int = 0,
) -> Boot:
    """The logs of booting `release` (profile number `profile`); `boot_loader`/`uki` replace
    the Authenticode digests the firmware measures into PCR 4 (another image). `machine`
    numbers the simulated machine: its boot options and machine-id differ from others'."""
    reference = release.reference
    loader_digest = boot_loader or reference.boot_loader_authenticode_sha256 or b""
    uki_digest = uki or reference.uki_authenticode_sha256
    application = ev.EV_EFI_BOOT_SERVICES_APPLICATION
    separator = [measured(pcr, ev.EV_SEPARATOR, bytes(4), BANKS) for pcr in range(8)]
    records = [
        *_platform_events(machine),
        *_secure_boot_events(release.keys, secure_boot),
        *separator,
    ]
    records += [
        measured(4, ev.EV_EFI_ACTION, b"Calling EFI Application from Boot Option", BANKS),
        EventRecord(4, application, image_load_data(0x7D000000, 0x1A000), _same(loader_digest)),
    ]
    if secure_boot:
        authority = OWNER.bytes_le + release.keys.db
        records.append(
            _variable(
                7, ev.EV_EFI_VARIABLE_AUTHORITY, efivar.EFI_IMAGE_SECURITY_DATABASE, "db", authority
            )
        )
    gpt = b"EFI PART" + bytes(84) + (4).to_bytes(8, "little") + bytes(4 * 128)
    records.append(measured(5, 0x80000006, gpt, BANKS))
    loader_conf = tagged_event_data(LOADER_CONF_TAG, utf16("loader.conf"))
    records += [
        measured(5, ev.EV_EVENT_TAG, loader_conf, BANKS, digest_of=b"timeout 3\n"),
        EventRecord(4, application, image_load_data(0x7C000000, 0x2400000), _same(uki_digest)),
        *_stub_events(release.uki, profile),
        measured(5, ev.EV_EFI_ACTION, b"Exit Boot Services Invocation", BANKS),
        measured(5, ev.EV_EFI_ACTION, b"Exit Boot Services Returned with Success", BANKS),
    ]
    return Boot(tuple(records), _userspace_log(machine))


def _same(sha256: bytes) -> dict[str, bytes]:
    """An image's digests: its Authenticode SHA-256, and a SHA-1 derived from it (the
    simulation has no PE to hash with SHA-1)."""
    return {"sha1": hashlib.sha1(sha256).digest(), "sha256": sha256}


def _userspace_log(machine: int) -> bytes:
    machine_id = hashlib.sha256(b"machine %d" % machine).hexdigest()[:32]
    records = [userspace_record(11, phase, BANKS) for phase in pcr_math.BOOT_PHASES[:2]]
    records.append(userspace_record(15, f"machine-id:{machine_id}", BANKS, "machine-id"))
    records.append(userspace_record(11, pcr_math.BOOT_PHASES[2], BANKS))
    for mount in ("/", "/usr", "/var"):
        what = f"file-system:{mount}:ext4:0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0:root"
        records.append(userspace_record(15, what, BANKS, "filesystem"))
    volume = f"cryptsetup:root:{machine_id}"
    records.append(userspace_record(15, volume, BANKS, "volume-key"))
    records.append(userspace_record(11, pcr_math.BOOT_PHASES[3], BANKS))
    return b"".join(records)


# The software TPM.


@dataclass
class SoftwareTpm:
    """PCR banks and an attestation key in memory: RSA-2048 RSASSA-SHA256 (tpm2_createak's
    default) or, given an EC key, P-256 ECDSA-SHA256."""

    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    banks: tuple[str, ...] = BANKS
    clock: int = 1_000_000
    pcrs: dict[str, list[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.pcrs = {bank: [_initial(pcr, bank) for pcr in range(24)] for bank in self.banks}

    @property
    def public(self) -> PublicArea:
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            point = self.key.public_key().public_numbers()
            ecc = EccParameters(
                SymmetricDefinition(),
                Scheme(ALG_ECDSA, ALG_SHA256),
                ECC_NIST_P256,
                Scheme(ALG_NULL),
                point.x.to_bytes(32, "big"),
                point.y.to_bytes(32, "big"),
            )
            return PublicArea(ALG_ECC, ALG_SHA256, AK_ATTRIBUTES, b"", ecc)
        numbers = self.key.public_key().public_numbers()
        parameters = RsaParameters(
            SymmetricDefinition(),
            Scheme(ALG_RSASSA, ALG_SHA256),
            2048,
            0,
            numbers.n.to_bytes(256, "big"),
        )
        return PublicArea(ALG_RSA, ALG_SHA256, AK_ATTRIBUTES, b"", parameters)

    def sign(self, message: bytes) -> Signature:
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(self.key.sign(message, ec.ECDSA(hashes.SHA256())))
            return Signature(
                ALG_ECDSA, ALG_SHA256, r=r.to_bytes(32, "big"), s=s.to_bytes(32, "big")
            )
        raw = self.key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return Signature(ALG_RSASSA, ALG_SHA256, rsa=raw)

    def extend(self, pcr: int, digests: Mapping[str, bytes]) -> None:
        for bank, digest in digests.items():
            if bank in self.pcrs:
                self.pcrs[bank][pcr] = pcr_math.extend(self.pcrs[bank][pcr], digest, bank)

    def run(self, boot: Boot) -> None:
        for pcr, digests in boot.extends():
            self.extend(pcr, digests)

    def quote(
        self, pcrs: Sequence[int], nonce: bytes, bank: str = "sha256"
    ) -> tuple[bytes, bytes, dict[str, dict[int, bytes]]]:
        """(TPMS_ATTEST, TPMT_SIGNATURE, quoted values) as tpm2_quote writes them."""
        selection = PcrSelection(bank, tuple(sorted(pcrs)))
        values = {bank: {pcr: self.pcrs[bank][pcr] for pcr in selection.pcrs}}
        info = QuoteInfo((selection,), quote_pcr_digest([selection], values, "sha256"))
        self.clock += 1000
        signer = qualified_name(
            qualified_name(RH_ENDORSEMENT, b"\x00\x0b" + bytes(32)), self.public.name()
        )
        attest = Attest(
            ST_ATTEST_QUOTE,
            signer,
            nonce,
            ClockInfo(self.clock, 1, 0, True),
            0x20191023,
            info.to_bytes(),
        )
        message = attest.to_bytes()
        return message, self.sign(message).to_bytes(), values


def _initial(pcr: int, bank: str) -> bytes:
    zero = pcr_math.zero_pcr(bank)
    return b"\xff" * len(zero) if 17 <= pcr <= 22 else zero


def simulated_evidence(
    tpm: SoftwareTpm,
    boot: Boot,
    nonce: bytes,
    pcrs: Sequence[int] = SIMULATED_PCRS,
    ipe_events: Iterable[IpeEvent] = (),
) -> Evidence:
    """Evidence of a node that booted `boot` on `tpm` (reset first) and answers `nonce`."""
    tpm.reset()
    tpm.run(boot)
    message, signature, values = tpm.quote(pcrs, nonce)
    return Evidence(
        message, signature, values, boot.firmware_log, boot.userspace, tuple(ipe_events)
    )


def with_firmware_records(boot: Boot, records: Iterable[EventRecord]) -> Boot:
    return replace(boot, firmware=tuple(records))
