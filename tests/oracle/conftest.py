"""Artifacts made by the real tools, shared by the oracle tests (built once per session)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ultraviolet.build.keys import KeyPair, generate_signing_key, write_key_pair
from ultraviolet.tools import ToolsChroot

REPART_DEFINITIONS = {
    "00-esp.conf": "[Partition]\nType=esp\nFormat=vfat\nSizeMinBytes=64M\nSizeMaxBytes=64M\n",
    "10-usr.conf": (
        "[Partition]\nType=usr\nFormat=erofs\nCopyFiles=/src:/\nVerity=data\n"
        "VerityMatchKey=usr\nLabel=fixture_1.2.3\nMinimize=best\n"
    ),
    "11-usr-verity.conf": (
        "[Partition]\nType=usr-verity\nVerity=hash\nVerityMatchKey=usr\n"
        "Label=fixture_1.2.3\nMinimize=best\n"
    ),
    "12-usr-verity-sig.conf": (
        "[Partition]\nType=usr-verity-sig\nVerity=signature\nVerityMatchKey=usr\n"
        "Label=fixture_1.2.3\n"
    ),
    "20-home.conf": (
        "[Partition]\nType=home\nSizeMinBytes=8M\nSizeMaxBytes=8M\nNoAuto=yes\nGrowFileSystem=yes\n"
    ),
}


@dataclass(frozen=True)
class RepartImage:
    image: Path
    certificate: Path
    keys: KeyPair
    report: list[dict[str, Any]]  # systemd-repart --json=pretty


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[KeyPair, Path, Path]:
    directory = tmp_path_factory.mktemp("keys")
    keys = generate_signing_key("Ultraviolet oracle tests")
    write_key_pair(keys, directory / "test.key", directory / "test.crt")
    return keys, directory / "test.key", directory / "test.crt"


@pytest.fixture(scope="session")
def repart_image(
    tools_chroot: ToolsChroot,
    tmp_path_factory: pytest.TempPathFactory,
    signing_keys: tuple[KeyPair, Path, Path],
) -> RepartImage:
    """An image written by systemd-repart --empty=create with a signed verity usr."""
    keys, key_path, cert_path = signing_keys
    work = tmp_path_factory.mktemp("repart")
    definitions = work / "repart.d"
    definitions.mkdir()
    for name, text in REPART_DEFINITIONS.items():
        (definitions / name).write_text(text)
    source = work / "src"
    (source / "lib" / "fixture").mkdir(parents=True)
    for index in range(40):
        (source / "lib" / "fixture" / f"file{index}").write_bytes(bytes([index]) * (index * 997))
    image = work / "image.raw"
    result = tools_chroot.run(
        [
            "systemd-repart",
            "--empty=create",
            "--size=auto",
            "--offline=yes",
            "--dry-run=no",
            "--json=pretty",
            f"--definitions={definitions}",
            f"--root={work}",
            f"--private-key={key_path}",
            f"--certificate={cert_path}",
            str(image),
        ],
        binds=[work, key_path.parent],
    )
    return RepartImage(image, cert_path, keys, json.loads(result.text))
