"""`uvctl attest serve` refuses unusable arguments before it opens anything (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ultraviolet.cli import main

from .certs import authority


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--admin-token-file", "/nonexistent/token"], "--admin-token-file"),
        (["--admin-token-file", "{short}"], "at least 16 characters"),
        (["--admin-token-file", "{token}", "--listen", "nowhere"], "expected HOST:PORT"),
        (["--admin-token-file", "{token}", "--pcrs", "4,x"], "--pcrs"),
        (["--admin-token-file", "{token}", "--ek-acceptance", "certificate"], "needs --ek-ca"),
        (["--admin-token-file", "{token}", "--ek-ca", "/nonexistent/ca.pem"], "ca.pem"),
        (["--admin-token-file", "{token}", "--ek-ca", "{short}"], "neither PEM certificates"),
        (["--admin-token-file", "{token}", "--ek-ca", "{issuing}"], "no self-signed root"),
        (
            ["--admin-token-file", "{token}", "--ek-ca", "{root}", "--ek-acceptance", "approved"],
            "would never be used",
        ),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    (tmp_path / "short").write_text("abc")
    (tmp_path / "token").write_text("a-long-enough-admin-token")
    root = authority("Vendor Root CA")
    (tmp_path / "root.pem").write_bytes(root.pem)
    (tmp_path / "issuing.pem").write_bytes(authority("Vendor EK CA", root).pem)
    files = {name: tmp_path / name for name in ("short", "token")}
    files |= {name: tmp_path / f"{name}.pem" for name in ("root", "issuing")}
    arguments = [a.format(**files) for a in extra]
    database = str(tmp_path / "attest.db")
    assert main(["attest", "serve", "--database", database, *arguments]) == 2
    assert message in capsys.readouterr().err
    assert not Path(database).exists()  # nothing opened
