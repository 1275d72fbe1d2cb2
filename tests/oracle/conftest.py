"""Artifacts made by the real tools, shared by the oracle tests (built once per session)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ultraviolet.build.keys import KeyPair, generate_signing_key, write_key_pair
from ultraviolet.formats.unitfile import render_unit, unit
from ultraviolet.tools import ToolsChroot

LABEL = "fixture_1.2.3"
# Rendered with our unitfile module, so that systemd-repart itself checks what we write.
REPART_DEFINITIONS = {
    "00-esp.conf": unit(
        (
            "Partition",
            [("Type", "esp"), ("Format", "vfat"), ("SizeMinBytes", "64M"), ("SizeMaxBytes", "64M")],
        )
    ),
    "10-usr.conf": unit(
        (
            "Partition",
            [
                ("Type", "usr"),
                ("Format", "erofs"),
                ("CopyFiles", "/src:/"),
                ("Verity", "data"),
                ("VerityMatchKey", "usr"),
                ("Label", LABEL),
                ("Minimize", "best"),
            ],
        )
    ),
    "11-usr-verity.conf": unit(
        (
            "Partition",
            [
                ("Type", "usr-verity"),
                ("Verity", "hash"),
                ("VerityMatchKey", "usr"),
                ("Label", LABEL),
                ("Minimize", "best"),
            ],
        )
    ),
    "12-usr-verity-sig.conf": unit(
        (
            "Partition",
            [
                ("Type", "usr-verity-sig"),
                ("Verity", "signature"),
                ("VerityMatchKey", "usr"),
                ("Label", LABEL),
            ],
        )
    ),
    "20-home.conf": unit(
        (
            "Partition",
            [
                ("Type", "home"),
                ("SizeMinBytes", "8M"),
                ("SizeMaxBytes", "8M"),
                ("NoAuto", "yes"),
                ("GrowFileSystem", "yes"),
            ],
        )
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
    for name, definition in REPART_DEFINITIONS.items():
        (definitions / name).write_text(render_unit(definition))
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
