"""A real mkosi-built image (the embedded minimal tree) through `uvctl verify` and `inspect`.

The image is built once per tree content and cached in the cache directory; every tamper case
works on a private copy and names the check id that must catch it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ultraviolet.build.keys import generate_signing_key
from ultraviolet.build.mkosi import MkosiOutputs, build_cached, embedded_tree
from ultraviolet.cli import main
from ultraviolet.diskimage import open_disk_image
from ultraviolet.testbed import tamper
from ultraviolet.tools import ToolsChroot
from ultraviolet.verify.chain import verify_image
from ultraviolet.verify.trust import load_certificates

pytestmark = pytest.mark.build


@pytest.fixture(scope="session")
def minimal_image(tools_chroot: ToolsChroot) -> MkosiOutputs:
    return build_cached(embedded_tree())


@pytest.fixture
def image_copy(minimal_image: MkosiOutputs, tmp_path: Path) -> Iterator[Path]:
    copy = tmp_path / "image.raw"
    shutil.copyfile(minimal_image.image, copy)
    yield copy


def _partition(image: Path, type_name: str) -> tuple[int, int]:
    with open_disk_image(image) as disk:
        (partition,) = disk.partitions_of_type(type_name)
        return partition.start, partition.size


def _flip(path: Path, offset: int) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


def _failing_ids(image: Path, certificate: Path) -> set[str]:
    report = verify_image(image, load_certificates([certificate]))
    assert not report.ok
    return {r.check_id for r in report.failures()}


def test_built_image_verifies(
    minimal_image: MkosiOutputs, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["verify", str(minimal_image.image), "--trust", str(minimal_image.certificate), "--json"]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    assert report["ok"] is True
    ids = {r["id"] for r in report["results"]}
    assert {"gpt.header", "verity.tree", "veritysig.signature", "usr.partuuid"} <= ids
    assert {"uki.signature", "uki.usrhash", "boot.signature"} <= ids


def test_inspect_shows_the_chain(
    minimal_image: MkosiOutputs, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["inspect", str(minimal_image.image), "--trust", str(minimal_image.certificate), "--json"]
    )
    info = json.loads(capsys.readouterr().out)
    assert code == 0
    types = [p["type"] for p in info["partitions"]]
    assert types == ["esp", "usr", "usr-verity", "usr-verity-sig"]
    (sig,) = info["verity_signatures"]
    assert sig["signature_verified"] is True
    (verity,) = info["verity"]
    assert verity["data_matches_tree"] is True
    assert verity["root_hash"] == sig["root_hash"]
    (uki,) = info["esp"]["ukis"]
    assert uki["usrhash"] == sig["root_hash"]
    assert f"usrhash={sig['root_hash']}" in uki["cmdline"]
    assert {".linux", ".initrd", ".cmdline", ".osrel", ".uname"} <= {
        s["name"] for s in uki["sections"]
    }


def test_flipped_usr_data_fails_verity(image_copy: Path, minimal_image: MkosiOutputs) -> None:
    start, size = _partition(image_copy, "usr")
    _flip(image_copy, start + size // 3)
    assert "verity.tree" in _failing_ids(image_copy, minimal_image.certificate)


def test_flipped_hash_tree_fails_verity(image_copy: Path, minimal_image: MkosiOutputs) -> None:
    start, _ = _partition(image_copy, "usr-verity")
    _flip(image_copy, start + 4096 + 100)  # the first hash block after the superblock
    assert "verity.tree" in _failing_ids(image_copy, minimal_image.certificate)


def test_flipped_verity_sig_fails(image_copy: Path, minimal_image: MkosiOutputs) -> None:
    start, _ = _partition(image_copy, "usr-verity-sig")
    content = image_copy.read_bytes()[start : start + 4096]
    value_start = content.index(b'"signature":"') + len(b'"signature":"')
    value_end = content.index(b'"', value_start)
    _flip(image_copy, start + value_end - 20)  # inside the RSA signature value at the end
    failing = _failing_ids(image_copy, minimal_image.certificate)
    assert failing & {"veritysig.signature", "veritysig.format"}


def test_flipped_uki_cmdline_fails_signature(image_copy: Path, minimal_image: MkosiOutputs) -> None:
    start, size = _partition(image_copy, "esp")
    esp = image_copy.read_bytes()[start : start + size]
    needle = b"systemd.firstboot=no"
    assert esp.count(needle) == 1, "the command line should appear once, in the UKI"
    _flip(image_copy, start + esp.index(needle))
    assert "uki.signature" in _failing_ids(image_copy, minimal_image.certificate)


def test_flipped_gpt_header_fails(image_copy: Path, minimal_image: MkosiOutputs) -> None:
    _flip(image_copy, 512 + 56)  # inside the disk GUID: the header CRC no longer matches
    assert "gpt.header" in _failing_ids(image_copy, minimal_image.certificate)


def test_other_certificate_fails(
    minimal_image: MkosiOutputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.crt"
    other.write_bytes(generate_signing_key("someone else").certificate_pem())
    failing = _failing_ids(minimal_image.image, other)
    assert {"veritysig.signature", "uki.signature", "boot.signature"} <= failing
    assert main(["verify", str(minimal_image.image), "--trust", str(other)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_truncated_image_is_unusable_input(
    minimal_image: MkosiOutputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truncated = tmp_path / "truncated.raw"
    with minimal_image.image.open("rb") as source:
        truncated.write_bytes(source.read(8 * 1024 * 1024))
    code = main(["verify", str(truncated), "--trust", str(minimal_image.certificate)])
    captured = capsys.readouterr()
    assert code == 2
    assert "beyond the end of the file" in captured.err
    assert "Traceback" not in captured.err


@pytest.mark.oracle
def test_inspect_agrees_with_sfdisk_and_dissect(
    minimal_image: MkosiOutputs, tools_chroot: ToolsChroot, capsys: pytest.CaptureFixture[str]
) -> None:
    image = minimal_image.image
    assert main(["inspect", str(image), "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)
    sfdisk = json.loads(tools_chroot.run(["sfdisk", "-J", str(image)], binds=[image.parent]).text)[
        "partitiontable"
    ]
    assert ours["disk_guid"] == sfdisk["id"].lower()
    assert ours["sector_size"] == sfdisk["sectorsize"]
    expected = [
        (p["start"] * 512, p["size"] * 512, p["type"].lower(), p["uuid"].lower(), p["name"])
        for p in sfdisk["partitions"]
    ]
    got = [
        (p["start"], p["size"], p["type_uuid"], p["uuid"], p["label"]) for p in ours["partitions"]
    ]
    assert got == expected
    dissect = json.loads(
        tools_chroot.run(["systemd-dissect", "--json=short", str(image)], binds=[image.parent]).text
    )
    by_uuid = {m["partition_uuid"]: m for m in dissect["mounts"]}
    for partition in ours["partitions"]:
        mount = by_uuid[partition["uuid"]]
        assert mount["designator"] == partition["type"]
        assert mount["architecture"] == partition["architecture"]
    assert {m["verity"] for m in dissect["mounts"] if m["designator"] == "usr"} == {"signed"}


@pytest.mark.parametrize(
    ("make_patches", "caught_by"),
    [
        (tamper.usr_superblock, "verity.tree"),
        (tamper.uki_byte, "uki.signature"),
        (tamper.uki_unsigned, "uki.signature"),
    ],
    ids=["usr-superblock", "uki-byte", "uki-unsigned"],
)
def test_vm_tamper_patches_are_caught_offline(
    image_copy: Path,
    minimal_image: MkosiOutputs,
    make_patches: Callable[[Path], list[tamper.Patch]],
    caught_by: str,
) -> None:
    """The patches the VM tamper tests write into their overlay change what they claim to:
    applied to a copy, the offline chain check fails at the same link as the firmware or the
    kernel must at boot."""
    patches = make_patches(image_copy)
    original = image_copy.read_bytes()
    with image_copy.open("r+b") as handle:
        for patch in patches:
            assert original[patch.offset : patch.offset + len(patch.data)] != patch.data
            handle.seek(patch.offset)
            handle.write(patch.data)
    assert caught_by in _failing_ids(image_copy, minimal_image.certificate)
