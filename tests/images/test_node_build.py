"""`uvctl build examples/container-host.toml`: a real image from the node policy, built once
per rendered-tree content (cached in the cache directory, keys included), shared with the demo."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from ultraviolet.build.keyset import KeySet
from ultraviolet.build.node import BuildResult, build_cached_node, cached_build_location
from ultraviolet.cli import main
from ultraviolet.formats import openpgp
from ultraviolet.formats.gpt import root_hash_partition_uuids
from ultraviolet.formats.pkcs7 import parse_signed_data, verify_signed_data
from ultraviolet.policy import load_policy, parse_policy
from ultraviolet.tools import ToolsChroot

pytestmark = pytest.mark.build

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "container-host.toml"


@pytest.fixture(scope="session")
def example_build(tools_chroot: ToolsChroot) -> tuple[BuildResult, KeySet]:
    return build_cached_node(load_policy(EXAMPLE))


def test_release_verifies(
    example_build: tuple[BuildResult, KeySet], capsys: pytest.CaptureFixture[str]
) -> None:
    result, keys = example_build
    db = keys.signer("db").certificate_path
    command = ["verify", "--json", str(result.image), "--trust", str(db)]
    assert main([*command, "--policy", str(EXAMPLE), "--reference", str(result.reference)]) == 0
    report = json.loads(capsys.readouterr().out)
    statuses = {(r["id"], r["status"]) for r in report["results"]}
    for check in ("ipe.present", "ipe.signature", "ipe.policy", "pcr11.reference"):
        assert (check, "pass") in statuses, check
    for check in ("reference.uki", "reference.usr", "reference.policy"):
        assert (check, "pass") in statuses, check
    assert all(r["status"] == "pass" for r in report["results"]), report
    assert main(["inspect", "--json", str(result.image)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [p["type"] for p in info["partitions"]] == ["esp", "usr", "usr-verity", "usr-verity-sig"]
    assert {p["label"] for p in info["partitions"][1:]} == {"container-host_1.0.0"}
    (uki,) = info["esp"]["ukis"]
    assert uki["usrhash"] == info["verity_signatures"][0]["root_hash"]


def test_manifest_and_reference(example_build: tuple[BuildResult, KeySet]) -> None:
    result, keys = example_build
    manifest = (result.release / "SHA256SUMS").read_bytes()
    for line in manifest.decode().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256((result.release / name).read_bytes()).hexdigest() == digest
    signed = parse_signed_data((result.release / "SHA256SUMS.p7s").read_bytes())
    assert verify_signed_data(
        signed, [keys.signer("update").certificate], detached_content=manifest
    ).ok
    keyring = keys.signer("update").openpgp_public_key()
    gpg_signature = (result.release / "SHA256SUMS.gpg").read_bytes()
    assert openpgp.verify_detached(gpg_signature, manifest, keyring).ok
    reference = json.loads(result.reference.read_text())
    assert reference["image"] == {"name": "container-host", "version": "1.0.0"}
    assert reference["ipe_policy_sha256"] is not None
    assert set(reference["pcr11"]["main"]) == {
        "enter-initrd",
        "enter-initrd:leave-initrd",
        "enter-initrd:leave-initrd:sysinit",
        "enter-initrd:leave-initrd:sysinit:ready",
    }


@pytest.mark.oracle
def test_reference_pcr11_equals_systemd_measure(
    example_build: tuple[BuildResult, KeySet], tools_chroot: ToolsChroot, tmp_path: Path
) -> None:
    from ultraviolet.formats.uki import parse_uki

    result, _ = example_build
    uki = parse_uki(result.uki.read_bytes())
    reference = json.loads(result.reference.read_text())["pcr11"]
    # main twice: profile 1 is the twin systemd-boot 257 starts on trial boots (build/rootsig.py)
    assert [p.id for p in uki.profiles] == ["main", "main", "ipe-enforce", "factory-reset"]
    assert set(reference) == {"main", "ipe-enforce", "factory-reset"}
    for profile in uki.profiles:
        directory = tmp_path / f"{profile.number}-{profile.id}"
        directory.mkdir()
        arguments = []
        for name, section in profile.sections.items():
            (directory / name[1:]).write_bytes(section.data)
            arguments.append(f"--{name[1:]}={directory / name[1:]}")
        measured = tools_chroot.run(
            ["/usr/lib/systemd/systemd-measure", "calculate", "--json=short", *arguments],
            binds=[tmp_path],
        )
        theirs = {e["phase"]: e["hash"] for e in json.loads(measured.text)["sha256"]}
        assert reference[profile.id] == theirs, profile.id


def test_profiles_and_esp_name(
    example_build: tuple[BuildResult, KeySet], capsys: pytest.CaptureFixture[str]
) -> None:
    from ultraviolet.formats.uki import parse_uki

    result, _ = example_build
    uki = parse_uki(result.uki.read_bytes())
    cmdlines = {p.id: p.cmdline or "" for p in uki.profiles}
    assert cmdlines["factory-reset"].endswith(" systemd.factory_reset=1")
    assert cmdlines["ipe-enforce"].endswith(" ultraviolet.ipe=enforce")
    assert cmdlines["main"] == uki.cmdline
    assert main(["inspect", "--json", str(result.image)]) == 0
    (esp_uki,) = json.loads(capsys.readouterr().out)["esp"]["ukis"]
    assert esp_uki["path"] == "EFI/Linux/container-host_1.0.0.efi"
    assert esp_uki["profiles"] == 4


@pytest.mark.oracle
def test_image_carries_policy_files(
    example_build: tuple[BuildResult, KeySet], tools_chroot: ToolsChroot, tmp_path: Path
) -> None:
    result, _ = example_build
    root_hash = bytes.fromhex(json.loads(result.reference.read_text())["usr_root_hash"])
    data_uuid, verity_uuid = root_hash_partition_uuids(root_hash)
    # The release names carry the partition UUIDs sysupdate gives the B slot (@u).
    usr = result.release / f"container-host_1.0.0_{data_uuid}.usr.raw"
    assert (result.release / f"container-host_1.0.0_{verity_uuid}.usr-verity.raw").is_file()
    out = tmp_path / "usr"
    tools_chroot.run(["fsck.erofs", f"--extract={out}", str(usr)], binds=[tmp_path, usr.parent])
    assert not (out / "lib" / "ultraviolet").exists()  # the IPE policy is in the UKI's initrd
    # systemd-sysupdate's Verify=yes, as systemd-pull runs gpg, against the image's own keyring
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    sums = result.release / "SHA256SUMS"
    gpg = (
        f"gpg --no-options --no-default-keyring --no-auto-key-locate --no-auto-check-trustdb "
        f"--batch --trust-model=always --homedir={home} "
        f"--keyring={out / 'lib/systemd/import-pubring.gpg'} --verify {sums}.gpg - < {sums}; "
        f"status=$?; gpgconf --homedir={home} --kill all; exit $status"
    )
    tools_chroot.run(["sh", "-c", gpg], binds=[tmp_path, result.release])
    assert (out / "lib" / "systemd" / "systemd-sysupdate").is_file()
    assert (out / "lib" / "repart.d" / "50-root.conf").is_file()
    assert (out / "lib" / "sysupdate.d" / "60-uki.transfer").is_file()
    assert (out / "bin" / "containerd").is_file()


def test_demo_command_shows_a_passing_trust_report(
    example_build: tuple[BuildResult, KeySet], capsys: pytest.CaptureFixture[str]
) -> None:
    # The README's main command: the same cached build, inspected and verified.
    assert main(["demo", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Verdict: PASSED" in out
    assert "usrhash=" in out and "reference.json" in out


def test_uki_hands_the_root_hash_signature_to_the_kernel(
    example_build: tuple[BuildResult, KeySet],
) -> None:
    from ultraviolet.build.rootsig import OPTION
    from ultraviolet.formats.uki import cmdline_value, parse_uki

    result, keys = example_build
    uki = parse_uki(result.uki.read_bytes())
    cmdline = uki.cmdline or ""
    assert len(cmdline) < 2048
    option = cmdline_value(cmdline, "systemd.verity_usr_options")
    assert option is not None and ("systemd.verity_usr_options=" + option).startswith(OPTION)
    signature = base64.b64decode(option.removeprefix("root-hash-signature=base64:"))
    signed = parse_signed_data(signature)
    assert signed.certificates == () and signed.signers[0].signed_attributes is None
    root_hash = json.loads(result.reference.read_text())["usr_root_hash"]
    assert uki.usrhash == root_hash
    check = verify_signed_data(
        signed, [keys.signer("verity").certificate], detached_content=root_hash.encode()
    )
    assert check.ok


def test_policy_only_change_reuses_usr_and_resigns_the_uki(
    example_build: tuple[BuildResult, KeySet], capsys: pytest.CaptureFixture[str]
) -> None:
    """Another command line word and an audit-mode IPE policy: mkosi does not run again (same
    /usr, same root hash), the new UKI carries both changes and the new release verifies
    against the changed policy and its own reference values, not against the old ones."""
    result, keys = example_build
    text = EXAMPLE.read_text()
    changed = text.replace('cmdline = ["quiet"]', 'cmdline = ["quiet", "loglevel=4"]')
    changed = changed.replace('ipe_mode = "enforce"', 'ipe_mode = "audit"')
    assert changed.count("loglevel=4") == 1 and 'ipe_mode = "audit"' in changed
    variant = parse_policy(changed, source=str(EXAMPLE))
    # The cache outlives a test run: an earlier run's release of this variant must not turn
    # the re-signing under test into a cache hit.
    where = cached_build_location(variant)
    assert where.output == cached_build_location(parse_policy(text, source=str(EXAMPLE))).output
    where.marker.unlink(missing_ok=True)
    shutil.rmtree(where.release, ignore_errors=True)
    lines: list[str] = []
    rebuilt, _ = build_cached_node(variant, progress=lines.append)
    assert any(line.startswith("reused the mkosi build") for line in lines), lines
    old, new = (json.loads(r.reference.read_text()) for r in (result, rebuilt))
    assert new["usr_root_hash"] == old["usr_root_hash"]
    assert new["uki"]["authenticode_sha256"] != old["uki"]["authenticode_sha256"]
    assert new["pcr11"] != old["pcr11"]
    assert " loglevel=4 " in new["uki"]["cmdline"]
    db = str(keys.signer("db").certificate_path)
    image = str(rebuilt.image)
    assert main(["verify", image, "--trust", db, "--reference", str(rebuilt.reference)]) == 0
    capsys.readouterr()
    assert main(["verify", image, "--trust", db, "--reference", str(result.reference)]) == 1
    assert "pcr11.reference" in capsys.readouterr().out
    assert main(["verify", image, "--trust", db, "--policy", str(EXAMPLE)]) == 1
    assert "mode is audit, the node policy says enforce" in capsys.readouterr().out
