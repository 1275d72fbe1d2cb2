"""The boot-time credentials of the agent's service: `ultraviolet.report-interval` replaces the
policy's report interval when it is a sane whole number of seconds, and is logged and ignored
otherwise (it never stops the agent)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ultraviolet.node.service import (
    INTERVAL_CREDENTIAL,
    ServiceConfig,
    agent_from_files,
    report_interval,
)

POLICY = ServiceConfig("https://verifier.example", (7, 11), ("sha256",), 300.0)


def credentials(directory: Path, value: str | bytes | None) -> dict[str, str]:
    if isinstance(value, str):
        (directory / INTERVAL_CREDENTIAL).write_text(value)
    elif isinstance(value, bytes):
        (directory / INTERVAL_CREDENTIAL).write_bytes(value)
    return {"CREDENTIALS_DIRECTORY": str(directory)}


def test_without_the_credential_the_policy_interval_holds(tmp_path: Path) -> None:
    assert report_interval(POLICY, {}) == 300.0
    assert report_interval(POLICY, credentials(tmp_path, None)) == 300.0
    assert report_interval(POLICY, credentials(tmp_path, "\n")) == 300.0  # empty: not given


@pytest.mark.parametrize(("text", "seconds"), [("60", 60.0), ("5\n", 5.0), (" 86400 ", 86400.0)])
def test_a_valid_credential_replaces_the_interval(
    tmp_path: Path, text: str, seconds: float
) -> None:
    assert report_interval(POLICY, credentials(tmp_path, text)) == seconds


@pytest.mark.parametrize(
    "text", ["0", "4", "86401", "-60", "60.5", "1e3", "sixty", "６０", "60 s", "0x3c"]
)
def test_a_bad_credential_is_logged_and_ignored(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "ultraviolet.node.service"):
        assert report_interval(POLICY, credentials(tmp_path, text)) == 300.0
    assert INTERVAL_CREDENTIAL in caplog.text and "keeping the policy's" in caplog.text


def test_an_unreadable_credential_is_logged_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / INTERVAL_CREDENTIAL).mkdir()  # reading it fails with an OSError
    with caplog.at_level(logging.WARNING, "ultraviolet.node.service"):
        assert report_interval(POLICY, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == 300.0
    assert INTERVAL_CREDENTIAL in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, "ultraviolet.node.service"):
        assert report_interval(POLICY, credentials(tmp_path / "..", None)) == 300.0
        binary = credentials(tmp_path.parent, b"\xff\xfe60")
        assert report_interval(POLICY, binary) == 300.0
    assert INTERVAL_CREDENTIAL in caplog.text


def test_the_agent_runs_at_the_credential_interval(tmp_path: Path) -> None:
    config = tmp_path / "agent.json"
    config.write_text('{"verifier_url": "https://v.example", "pcrs": [7], "interval": 300}')
    machine_id = tmp_path / "machine-id"
    machine_id.write_text("0123456789abcdef0123456789abcdef\n")
    state = tmp_path / "state"
    environ = credentials(tmp_path, "45")
    agent = agent_from_files(config, state, environ, machine_id=machine_id)
    assert (agent.config.interval, agent.config.node_id) == (45.0, "0123456789abcdef" * 2)
    assert 40.5 <= agent.interval_with_jitter() <= 49.5
    (tmp_path / INTERVAL_CREDENTIAL).write_text("1")  # too fast: the policy's 300 s stay
    assert agent_from_files(config, state, environ, machine_id=machine_id).config.interval == 300
