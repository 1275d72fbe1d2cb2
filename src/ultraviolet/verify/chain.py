"""The offline chain check of a disk image (ARCHITECTURE.md, steps 1-6).

GPT -> verity-sig signature -> root hash = partition UUIDs -> hash tree over the usr data ->
ESP -> systemd-boot and UKIs (Authenticode signature, `usrhash=` equal to a signed root hash)
-> the IPE policy in each UKI's initrd and PCR 11 against reference.json (measured.py).
Every check yields a CheckResult with a stable id; a failed link makes the links that depend on
it "skip" rather than disappear, so a report always shows how far trust reached.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from ultraviolet.diskimage import HASH_WORKERS, UKI_DIRECTORY, DiskImage, open_disk_image, uki_paths
from ultraviolet.errors import FormatError
from ultraviolet.formats.authenticode import authenticode_digest, verify_authenticode
from ultraviolet.formats.fat import FatVolume
from ultraviolet.formats.gpt import GptPartition, root_hash_partition_uuids
from ultraviolet.formats.uki import Uki, parse_uki
from ultraviolet.formats.verity import verify_hash_device
from ultraviolet.formats.veritysig import parse_verity_sig, verify_verity_sig
from ultraviolet.verify.measured import (
    Expectations,
    check_ipe,
    check_reference_policy,
    check_reference_uki,
    check_reference_usr,
)
from ultraviolet.verify.report import (
    CheckResult,
    Report,
    Severity,
    Status,
    failed,
    passed,
    skipped,
)

BOOTLOADER_PATHS = ("EFI/systemd/systemd-bootx64.efi", "EFI/BOOT/BOOTX64.EFI")


@dataclass(frozen=True)
class SignedUsr:
    """A usr slot whose root hash is signed: what the UKIs' `usrhash=` must point at."""

    label: str
    root_hash: bytes
    signature_ok: bool
    tree_ok: bool


def verify_image(
    path: Path, trusted: Sequence[x509.Certificate], expected: Expectations | None = None
) -> Report:
    """Run every offline check on the disk image at `path` against the trusted certificates
    and, where given, the node policy and the release's reference values."""
    expected = expected or Expectations()
    results: list[CheckResult] = []
    slots: list[SignedUsr] = []
    try:
        with open_disk_image(path) as image:
            results.append(passed("gpt.header", "primary GPT header and entries are valid"))
            results.extend(_check_gpt(image))
            results.extend(_check_usr_slots(image, trusted, slots))
            results.extend(_check_esp(image, trusted, slots, expected))
        results.extend(_check_reference(slots, expected))
    except FormatError as exc:
        # Only the GPT is parsed outside a check of its own: without it nothing else can run.
        results.append(failed("gpt.header", str(exc), offset=exc.offset))
    return Report.of(str(path), results)


def _check_gpt(image: DiskImage) -> Iterator[CheckResult]:
    table = image.gpt
    if table.backup_error is None:
        yield passed("gpt.backup", "backup GPT header and entries match the primary")
    else:
        yield failed("gpt.backup", table.backup_error)
    unknown = [p for p in table.partitions if p.type is None]
    arches = sorted({p.type.arch for p in table.partitions if p.type and p.type.arch})
    if unknown:
        yield failed(
            "gpt.types",
            "partitions with types outside the Discoverable Partitions Specification: "
            + ", ".join(f"{p.number} ({p.type_uuid})" for p in unknown),
            severity=Severity.WARNING,
        )
    elif len(arches) > 1:
        yield failed("gpt.types", f"partitions for several architectures: {', '.join(arches)}")
    else:
        yield passed("gpt.types", "all partition types are DPS types", architectures=arches)


def _check_usr_slots(
    image: DiskImage, trusted: Sequence[x509.Certificate], slots: list[SignedUsr]
) -> Iterator[CheckResult]:
    signatures = [p for p in image.partitions_of_type("usr-verity-sig") if p.label != "_empty"]
    if not signatures:
        yield failed("usr.present", "no usr-verity-sig partition: /usr is not signed")
        return
    yield passed("usr.present", f"{len(signatures)} signed usr slot(s)")
    for partition in signatures:
        yield from _check_usr_slot(image, partition, trusted, slots)


def _check_usr_slot(
    image: DiskImage,
    sig_partition: GptPartition,
    trusted: Sequence[x509.Certificate],
    slots: list[SignedUsr],
) -> Iterator[CheckResult]:
    subject = sig_partition.label or f"partition {sig_partition.number}"
    try:
        signature = parse_verity_sig(image.partition_bytes(sig_partition))
    except FormatError as exc:
        yield failed("veritysig.format", str(exc), subject, offset=exc.offset)
        return
    root_hex = signature.root_hash.hex()
    yield passed("veritysig.format", f"verity-sig names root hash {root_hex}", subject)
    check = verify_verity_sig(signature, trusted)
    if check.ok:
        signer = check.signer.subject.rfc4514_string() if check.signer else "?"
        yield passed("veritysig.signature", f"root hash signed by {signer}", subject)
    else:
        yield failed("veritysig.signature", check.reason, subject)
    data_uuid, verity_uuid = root_hash_partition_uuids(signature.root_hash)
    data = _partition_by_uuid(image, data_uuid, "usr")
    verity = _partition_by_uuid(image, verity_uuid, "usr-verity")
    if data is None or verity is None:
        missing = "usr data" if data is None else "usr-verity"
        yield failed(
            "usr.partuuid",
            f"no {missing} partition with the UUID derived from the signed root hash "
            f"({data_uuid if data is None else verity_uuid})",
            subject,
        )
        yield skipped("verity.tree", "no partitions to check the hash tree of", subject)
        slots.append(SignedUsr(subject, signature.root_hash, check.ok, False))
        return
    yield passed("usr.partuuid", "partition UUIDs are derived from the signed root hash", subject)
    tree_result = _check_tree(image, data, verity, signature.root_hash, subject)
    yield tree_result
    slots.append(
        SignedUsr(subject, signature.root_hash, check.ok, tree_result.status is Status.PASS)
    )


def _partition_by_uuid(image: DiskImage, wanted: object, type_name: str) -> GptPartition | None:
    for partition in image.partitions_of_type(type_name):
        if partition.uuid == wanted:
            return partition
    return None


def _check_tree(
    image: DiskImage,
    data: GptPartition,
    verity: GptPartition,
    root_hash: bytes,
    subject: str,
) -> CheckResult:
    try:
        result = verify_hash_device(
            image.partition_bytes(data),
            image.partition_bytes(verity),
            root_hash,
            workers=HASH_WORKERS,
        )
    except FormatError as exc:
        return failed("verity.tree", str(exc), subject, offset=exc.offset)
    if result.ok:
        return passed("verity.tree", "usr data matches the hash tree and root hash", subject)
    return failed(
        "verity.tree",
        result.message,
        subject,
        first_bad_block=result.first_bad_block,
    )


def _check_reference(slots: Sequence[SignedUsr], expected: Expectations) -> Iterator[CheckResult]:
    if expected.reference is None:
        return
    yield check_reference_usr([s.root_hash for s in slots if s.signature_ok], expected.reference)
    if expected.policy is not None:
        yield check_reference_policy(expected.policy, expected.reference)


def _check_esp(
    image: DiskImage,
    trusted: Sequence[x509.Certificate],
    slots: Sequence[SignedUsr],
    expected: Expectations,
) -> Iterator[CheckResult]:
    esps = image.partitions_of_type("esp")
    if len(esps) != 1:
        yield failed("esp.present", f"expected one ESP, found {len(esps)}")
        return
    esp = esps[0]
    try:
        volume = FatVolume.parse(image.partition_bytes(esp), base=esp.start)
    except FormatError as exc:
        yield failed("esp.filesystem", str(exc), offset=exc.offset)
        return
    yield passed("esp.filesystem", "ESP holds a readable FAT file system")
    yield from _check_bootloader(volume, trusted)
    yield from _check_ukis(volume, trusted, slots, expected)


def _check_bootloader(
    volume: FatVolume, trusted: Sequence[x509.Certificate]
) -> Iterator[CheckResult]:
    present = [p for p in BOOTLOADER_PATHS if volume.exists(p)]
    if not present:
        yield failed(
            "boot.loader", "no systemd-boot in the ESP (" + ", ".join(BOOTLOADER_PATHS) + ")"
        )
        return
    yield passed("boot.loader", "systemd-boot present", ", ".join(present))
    for path in present:
        yield _signature_result("boot.signature", volume.read_file(path), trusted, path)


def _signature_result(
    check_id: str, pe_image: bytes, trusted: Sequence[x509.Certificate], subject: str
) -> CheckResult:
    try:
        check = verify_authenticode(pe_image, trusted)
    except FormatError as exc:
        return failed(check_id, str(exc), subject, offset=exc.offset)
    if check.ok:
        return passed(
            check_id, "Authenticode signature verifies", subject, digest=check.digest.hex()
        )
    return failed(check_id, check.reason, subject)


def _check_ukis(
    volume: FatVolume,
    trusted: Sequence[x509.Certificate],
    slots: Sequence[SignedUsr],
    expected: Expectations,
) -> Iterator[CheckResult]:
    if not volume.exists(UKI_DIRECTORY):
        yield failed("uki.present", f"no {UKI_DIRECTORY} directory in the ESP")
        return
    paths = uki_paths(volume)
    if not paths:
        yield failed("uki.present", f"no UKI in {UKI_DIRECTORY}")
        return
    yield passed("uki.present", f"{len(paths)} UKI(s) in {UKI_DIRECTORY}")
    signed_hashes = {slot.root_hash: slot for slot in slots}
    for path in paths:
        image = volume.read_file(path)
        yield _signature_result("uki.signature", image, trusted, path)
        try:
            uki = parse_uki(image)
        except FormatError as exc:
            yield failed("uki.format", str(exc), path, offset=exc.offset)
            continue
        yield _check_usrhash(uki, signed_hashes, path)
        yield from check_ipe(uki, path, trusted, expected.policy)
        reference = expected.reference
        if reference is not None and path.rsplit("/", 1)[-1] == reference.uki_file:
            yield from check_reference_uki(uki, authenticode_digest(image), path, reference)
    reference = expected.reference
    if reference is not None and not any(p.endswith("/" + reference.uki_file) for p in paths):
        yield failed("reference.uki", f"no {reference.uki_file} (reference.json's UKI) in the ESP")


def _check_usrhash(uki: Uki, signed: dict[bytes, SignedUsr], subject: str) -> CheckResult:
    if uki.usrhash is None:
        return failed("uki.usrhash", "the UKI command line has no usrhash=", subject)
    try:
        wanted = bytes.fromhex(uki.usrhash)
    except ValueError:
        return failed("uki.usrhash", f"usrhash={uki.usrhash} is not hex", subject)
    slot = signed.get(wanted)
    if slot is None:
        return failed(
            "uki.usrhash",
            f"usrhash={uki.usrhash} matches no signed usr slot in this image",
            subject,
        )
    return passed("uki.usrhash", f"usrhash= equals the signed root hash of {slot.label}", subject)
