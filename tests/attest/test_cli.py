"""`uvctl attest serve` refuses unusable arguments before it opens anything (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ultraviolet.cli import main


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--admin-token-file", "/nonexistent/token"], "--admin-token-file"),
        (["--admin-token-file", "{short}"], "at least 16 characters"),
        (["--admin-token-file", "{token}", "--listen", "nowhere"], "expected HOST:PORT"),
        (["--admin-token-file", "{token}", "--pcrs", "4,x"], "--pcrs"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    (tmp_path / "short").write_text("abc")
    (tmp_path / "token").write_text("a-long-enough-admin-token")
    arguments = [a.format(short=tmp_path / "short", token=tmp_path / "token") for a in extra]
    database = str(tmp_path / "attest.db")
    assert main(["attest", "serve", "--database", database, *arguments]) == 2
    assert message in capsys.readouterr().err
    assert not Path(database).exists()  # nothing opened
