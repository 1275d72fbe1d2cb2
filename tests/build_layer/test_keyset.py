"""Key sets: roles, file modes, the signer interface, refusal to overwrite or load bad sets."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from ultraviolet.build.keyset import ROLES, init_keys, load_keys
from ultraviolet.cli import main
from ultraviolet.errors import BuildError
from ultraviolet.formats import openpgp
from ultraviolet.formats.pkcs7 import parse_signed_data, verify_signed_data


def test_init_creates_private_files_and_aliases(tmp_path: Path) -> None:
    keys = init_keys(tmp_path / "keys")
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    for role in ("pk", "kek", "db", "update"):
        assert stat.S_IMODE((tmp_path / "keys" / f"{role}.key").stat().st_mode) == 0o600
    assert keys.signer("verity").certificate == keys.signer("db").certificate
    assert keys.signer("ipe").key_path == keys.signer("db").key_path
    assert keys.signer("pk").certificate != keys.signer("db").certificate
    assert set(load_keys(tmp_path / "keys").signers) == set(ROLES)


def test_signer_interface_signs_verifiably(tmp_path: Path) -> None:
    signer = init_keys(tmp_path / "keys").signer("verity")
    signature = signer.sign_pkcs7_detached(b"roothash", include_certificate=False)
    check = verify_signed_data(
        parse_signed_data(signature), [signer.certificate], detached_content=b"roothash"
    )
    assert check.ok
    key, certificate = signer.tool_arguments()
    assert Path(key).is_file() and Path(certificate).is_file()


def test_update_signer_speaks_openpgp_for_sysupdate(tmp_path: Path) -> None:
    signer = init_keys(tmp_path / "keys").signer("update")
    keyring = signer.openpgp_public_key()
    assert keyring == signer.openpgp_public_key()  # same key file, same fingerprint
    signature = signer.sign_openpgp_detached(b"SHA256SUMS content\n")
    assert openpgp.verify_detached(signature, b"SHA256SUMS content\n", keyring).ok
    assert not openpgp.verify_detached(signature, b"other\n", keyring).ok


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    init_keys(tmp_path / "keys")
    with pytest.raises(BuildError, match="not overwriting"):
        init_keys(tmp_path / "keys")


def test_refuses_world_readable_keys(tmp_path: Path) -> None:
    init_keys(tmp_path / "keys")
    (tmp_path / "keys" / "db.key").chmod(0o644)
    with pytest.raises(BuildError, match="chmod 600"):
        load_keys(tmp_path / "keys")


def test_bad_manifest(tmp_path: Path) -> None:
    (tmp_path / "keys.toml").write_text("[roles]\npk = 3\n")
    with pytest.raises(BuildError, match="role 'pk'"):
        load_keys(tmp_path)
    with pytest.raises(BuildError, match="not a key set manifest"):
        load_keys(tmp_path / "missing")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "init", str(tmp_path / "k")]) == 0
    assert main(["keys", "show", "--json", str(tmp_path / "k")]) == 0
    rows = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert [r["role"] for r in rows] == list(ROLES)
    assert main(["keys", "init", str(tmp_path / "k")]) == 2
