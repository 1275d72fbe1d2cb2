"""PCR 11 prediction against systemd-measure calculate, every phase, several banks."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from ultraviolet.cli import main
from ultraviolet.formats.pcr import predict_pcr11
from ultraviolet.formats.uki import build_uki, parse_uki
from ultraviolet.tools import ToolsChroot

pytestmark = pytest.mark.oracle

SECTIONS = [
    (".linux", 70_000),
    (".osrel", 40),
    (".cmdline", 90),
    (".initrd", 50_000),
    (".ucode", 3000),
    (".splash", 500),
    (".dtb", 700),
    (".uname", 12),
    (".sbat", 80),
    (".pcrpkey", 450),
]


@pytest.mark.parametrize("bank", ["sha256", "sha1", "sha384"])
def test_prediction_equals_systemd_measure(
    tools_chroot: ToolsChroot, tmp_path: Path, bank: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(11)
    parts = [(name, rng.randbytes(size)) for name, size in SECTIONS]
    stub = (tools_chroot.root / "usr/lib/systemd/boot/efi/linuxx64.efi.stub").read_bytes()
    image = tmp_path / "uki.efi"
    image.write_bytes(build_uki(stub, parts))
    arguments = []
    for name, data in parts:
        (tmp_path / name[1:]).write_bytes(data)
        arguments.append(f"--{name[1:]}={tmp_path / name[1:]}")
    result = tools_chroot.run(
        [
            "/usr/lib/systemd/systemd-measure",
            "calculate",
            "--json=short",
            f"--bank={bank}",
            *arguments,
        ],
        binds=[tmp_path],
    )
    theirs = {e["phase"]: e["hash"] for e in json.loads(result.text)[bank]}
    ours = predict_pcr11(parse_uki(image.read_bytes()), bank=bank)
    assert {phase: value.hex() for phase, value in ours.items()} == theirs
    assert main(["pcr", "predict", str(image), "--bank", bank, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)[bank]
    assert {e["phase"]: e["hash"] for e in printed} == theirs
