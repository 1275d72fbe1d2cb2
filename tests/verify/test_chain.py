"""The chain check on small synthetic images built with our own writers; any mutated byte
gives a report (or a clear VerificationError), never an unexpected exception."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ultraviolet.build.keys import generate_signing_key
from ultraviolet.errors import VerificationError
from ultraviolet.formats.gpt import NewPartition, build_gpt, root_hash_partition_uuids, type_uuid
from ultraviolet.formats.verity import format_hash_device
from ultraviolet.formats.veritysig import create_verity_sig, render_verity_sig
from ultraviolet.verify.chain import verify_image

KEYS = generate_signing_key("chain tests")
MIB_SECTORS = 2048


def synthetic_image() -> bytes:
    """GPT with usr (random data), usr-verity and usr-verity-sig; no ESP."""
    data = random.Random(1).randbytes(64 * 4096)
    hash_device, root = format_hash_device(data, salt=b"s", uuid=uuid.UUID(int=7))
    signature = render_verity_sig(create_verity_sig(root, KEYS.key, KEYS.certificate), size=4096)
    data_uuid, verity_uuid = root_hash_partition_uuids(root)
    arch = "x86-64"
    blobs = [
        (type_uuid("usr", arch), data_uuid, data),
        (type_uuid("usr-verity", arch), verity_uuid, hash_device),
        (type_uuid("usr-verity-sig", arch), uuid.UUID(int=9), signature),
    ]
    partitions, lba = [], MIB_SECTORS
    for kind, unique, blob in blobs:
        sectors = -(-len(blob) // 512)
        partitions.append(NewPartition(kind, unique, lba, lba + sectors - 1, 1 << 60, "uv_1"))
        lba += sectors
    size = (lba + 64) * 512
    layout = build_gpt(size, partitions, disk_guid=uuid.UUID(int=3))
    disk = bytearray(size)
    disk[: len(layout.primary)] = layout.primary
    disk[layout.backup_offset :] = layout.backup
    for partition, (_, _, blob) in zip(partitions, blobs, strict=True):
        disk[partition.first_lba * 512 : partition.first_lba * 512 + len(blob)] = blob
    return bytes(disk)


IMAGE = synthetic_image()


def _ids(path: Path) -> dict[str, str]:
    report = verify_image(path, [KEYS.certificate])
    return {r.check_id: r.status.value for r in report.results}


def test_synthetic_image_links(tmp_path: Path) -> None:
    path = tmp_path / "image.raw"
    path.write_bytes(IMAGE)
    ids = _ids(path)
    for check in ("gpt.header", "gpt.backup", "veritysig.signature", "usr.partuuid", "verity.tree"):
        assert ids[check] == "pass", check
    assert ids["esp.present"] == "fail"  # no ESP in this image: the report says so


def test_tampered_data_block(tmp_path: Path) -> None:
    tampered = bytearray(IMAGE)
    tampered[MIB_SECTORS * 512 + 10 * 4096] ^= 1
    path = tmp_path / "image.raw"
    path.write_bytes(tampered)
    report = verify_image(path, [KEYS.certificate])
    (tree,) = [r for r in report.results if r.check_id == "verity.tree"]
    assert tree.status.value == "fail" and tree.details["first_bad_block"] == 10


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.tuples(st.integers(0, len(IMAGE) - 1), st.integers(0, 255)), min_size=1, max_size=4)
)
def test_mutations_give_a_report(tmp_path: Path, mutations: list[tuple[int, int]]) -> None:
    data = bytearray(IMAGE)
    for offset, value in mutations:
        data[offset] = value
    path = tmp_path / "mutated.raw"
    path.write_bytes(data)
    try:
        report = verify_image(path, [KEYS.certificate])
    except VerificationError:
        return  # e.g. a partition table pointing past the end of the file: unusable input
    assert report.results


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(0, 2 * MIB_SECTORS * 512))
def test_truncations_give_a_report_or_a_clear_error(tmp_path: Path, length: int) -> None:
    path = tmp_path / "truncated.raw"
    path.write_bytes(IMAGE[:length])
    try:
        report = verify_image(path, [KEYS.certificate])
    except VerificationError as exc:
        assert "beyond the end" in str(exc) or "empty" in str(exc)
        return
    assert not report.ok


def test_offsets_of_a_broken_header_are_reported(tmp_path: Path) -> None:
    tampered = bytearray(IMAGE)
    tampered[512 + 40] ^= 1
    path = tmp_path / "image.raw"
    path.write_bytes(tampered)
    report = verify_image(path, [KEYS.certificate])
    (failure,) = report.failures()
    assert failure.check_id == "gpt.header" and failure.details["offset"] == 512 + 16
