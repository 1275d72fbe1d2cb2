"""PKCS#7 and verity-sig against openssl smime and systemd-repart."""

from __future__ import annotations

from pathlib import Path

import pytest

from ultraviolet.build.keys import KeyPair, generate_signing_key
from ultraviolet.formats.gpt import parse_gpt
from ultraviolet.formats.pkcs7 import parse_signed_data, sign_detached, verify_signed_data
from ultraviolet.formats.veritysig import parse_verity_sig, verify_verity_sig
from ultraviolet.tools import ToolsChroot

from .conftest import RepartImage

pytestmark = pytest.mark.oracle

CONTENT = b"0e9a00811725c6c46aac24ab5213399559914437a433128614f3f234ff02ddb5"


@pytest.mark.parametrize(
    "options",
    [["-noattr"], ["-noattr", "-nocerts"], []],
    ids=["noattr", "noattr-nocerts", "attributes"],
)
def test_openssl_signatures_verify(
    tools_chroot: ToolsChroot,
    tmp_path: Path,
    signing_keys: tuple[KeyPair, Path, Path],
    options: list[str],
) -> None:
    keys, key_path, cert_path = signing_keys
    (tmp_path / "content").write_bytes(CONTENT)
    signature = tmp_path / "signature.der"
    tools_chroot.run(
        [
            "openssl",
            "smime",
            "-sign",
            "-binary",
            "-outform",
            "der",
            "-md",
            "sha256",
            "-signer",
            str(cert_path),
            "-inkey",
            str(key_path),
            "-in",
            str(tmp_path / "content"),
            "-out",
            str(signature),
            *options,
        ],
        binds=[tmp_path, key_path.parent],
    )
    signed = parse_signed_data(signature.read_bytes())
    assert verify_signed_data(signed, [keys.certificate], detached_content=CONTENT).ok
    assert not verify_signed_data(signed, [keys.certificate], detached_content=CONTENT[:-1]).ok
    other = generate_signing_key("other").certificate
    assert not verify_signed_data(signed, [other], detached_content=CONTENT).ok


@pytest.mark.parametrize("attributes", [False, True])
def test_our_signatures_verify_in_openssl(
    tools_chroot: ToolsChroot,
    tmp_path: Path,
    signing_keys: tuple[KeyPair, Path, Path],
    attributes: bool,
) -> None:
    keys, _, cert_path = signing_keys
    (tmp_path / "content").write_bytes(CONTENT)
    signature = tmp_path / "ours.der"
    signature.write_bytes(
        sign_detached(CONTENT, keys.key, keys.certificate, signed_attributes=attributes)
    )
    result = tools_chroot.run(
        [
            "openssl",
            "smime",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            str(signature),
            "-content",
            str(tmp_path / "content"),
            "-CAfile",
            str(cert_path),
            "-purpose",
            "any",
            "-out",
            "/dev/null",
        ],
        binds=[tmp_path, cert_path.parent],
    )
    assert b"Verification successful" in result.stderr


def test_repart_verity_sig_verifies(repart_image: RepartImage) -> None:
    disk = repart_image.image.read_bytes()
    (partition,) = [
        p for p in parse_gpt(disk).partitions if p.type and p.type.name == "usr-verity-sig"
    ]
    signature = parse_verity_sig(disk[partition.start : partition.end])
    usr = next(e for e in repart_image.report if e["type"] == "usr-x86-64")
    assert signature.root_hash.hex() == usr["roothash"]
    assert verify_verity_sig(signature, [repart_image.keys.certificate]).ok
    assert not verify_verity_sig(signature, [generate_signing_key("x").certificate]).ok
