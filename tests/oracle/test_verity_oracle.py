"""Our hash trees against `veritysetup format` / `veritysetup verify`, byte for byte."""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

import pytest

from ultraviolet.cli import main
from ultraviolet.formats.verity import format_hash_device
from ultraviolet.tools import ToolsChroot

pytestmark = pytest.mark.oracle

VOLUME = uuid.UUID("0b2d1c4e-5f60-4a7b-8c9d-0e1f2a3b4c5d")
SALT = bytes(range(32))


def _veritysetup_format(
    tools: ToolsChroot, data: Path, hashfile: Path, salt: bytes, superblock: bool
) -> str:
    argv = ["veritysetup", "format", str(data), str(hashfile), "--salt", salt.hex() or "-"]
    argv += ["--uuid", str(VOLUME)] if superblock else ["--no-superblock"]
    output = tools.run(argv, binds=[data.parent]).text
    return next(line.split()[-1] for line in output.splitlines() if line.startswith("Root hash"))


@pytest.mark.parametrize("blocks", [1, 7, 129, 16385, 16384])
@pytest.mark.parametrize("salt", [b"", SALT], ids=["nosalt", "salt"])
@pytest.mark.parametrize("superblock", [True, False], ids=["superblock", "nosuperblock"])
def test_byte_identical_to_veritysetup(
    tools_chroot: ToolsChroot, tmp_path: Path, blocks: int, salt: bytes, superblock: bool
) -> None:
    data = tmp_path / "data"
    data.write_bytes(random.Random(blocks).randbytes(blocks * 4096))  # 16384 blocks = 64 MiB
    theirs = tmp_path / "hash.theirs"
    root_hex = _veritysetup_format(tools_chroot, data, theirs, salt, superblock)
    ours, root = format_hash_device(
        data.read_bytes(), salt=salt, uuid=VOLUME, superblock=superblock, workers=2
    )
    assert root.hex() == root_hex
    assert ours == theirs.read_bytes()


def test_cli_output_is_accepted_by_veritysetup_verify(
    tools_chroot: ToolsChroot, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.write_bytes(random.Random(5).randbytes(300 * 4096))
    ours = tmp_path / "hash.ours"
    argv = ["verity", "format", str(data), str(ours), "--salt", SALT.hex(), "--uuid", str(VOLUME)]
    assert main([*argv, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    theirs = tmp_path / "hash.theirs"
    assert info["root_hash"] == _veritysetup_format(tools_chroot, data, theirs, SALT, True)
    assert ours.read_bytes() == theirs.read_bytes()
    verify = ["veritysetup", "verify", str(data), str(ours), info["root_hash"]]
    tools_chroot.run(verify, binds=[tmp_path])
    assert main(["verity", "verify", str(data), str(ours), info["root_hash"]]) == 0


def test_tampered_data_is_caught_by_both(
    tools_chroot: ToolsChroot, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    content = bytearray(random.Random(6).randbytes(200 * 4096))
    data.write_bytes(content)
    hashfile = tmp_path / "hash"
    root = _veritysetup_format(tools_chroot, data, hashfile, SALT, True)
    content[150 * 4096 + 1] ^= 1
    data.write_bytes(content)
    theirs = tools_chroot.run(
        ["veritysetup", "verify", str(data), str(hashfile), root], binds=[tmp_path], check=False
    )
    assert theirs.returncode != 0
    assert main(["verity", "verify", "--json", str(data), str(hashfile), root]) == 1
    assert json.loads(capsys.readouterr().out)["first_bad_block"] == 150
