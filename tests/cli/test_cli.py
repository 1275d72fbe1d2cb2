"""uvctl: help texts, exit codes, and clear errors (never a traceback) for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ultraviolet.cli import build_parser, main

COMMANDS = ["demo", "inspect", "verify", "verity", "pcr", "policy", "keys", "vm", "tools"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    assert len(capsys.readouterr().out) > 200


def test_top_level_help_lists_commands() -> None:
    text = build_parser().format_help()
    for command in COMMANDS:
        assert command in text


def test_garbage_file_fails_the_gpt_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "garbage.raw"
    garbage.write_bytes(b"\x00not a disk image" * 4096)
    cert = tmp_path / "c.pem"
    from ultraviolet.build.keys import generate_signing_key

    cert.write_bytes(generate_signing_key("t").certificate_pem())
    assert main(["verify", str(garbage), "--trust", str(cert), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    (failure,) = [r for r in report["results"] if r["status"] == "fail"]
    assert failure["id"] == "gpt.header"
    assert failure["details"]["offset"] == 512


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inspect", "/nonexistent.raw"], "cannot open /nonexistent.raw"),
        (["verify", "/nonexistent.raw", "--trust", "/nonexistent.pem"], "cannot read certificate"),
        (["policy", "check", "/nonexistent.toml"], "cannot read node policy"),
        (["verity", "verify", "/dev/null", "/dev/null", "zz"], "ROOTHASH must be hex"),
    ],
)
def test_unusable_input_exits_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_empty_image_is_unusable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"")
    assert main(["inspect", str(empty)]) == 2
    assert "is empty" in capsys.readouterr().err


def test_policy_check_reports_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "node.toml"
    policy.write_text('[image]\nname = "n"\nversion = "1.0"\nhostnmae = "x"\n')
    assert main(["policy", "check", str(policy)]) == 2
    assert f"{policy}:4: image.hostnmae: unknown key; did you mean 'hostname'?" in (
        capsys.readouterr().err
    )


def test_policy_explain(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "explain", "boot.tries"]) == 0
    assert "boot.tries (integer, default 3)" in capsys.readouterr().out
