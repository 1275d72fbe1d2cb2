"""The one subprocess wrapper: explicit environment, stdin from /dev/null, typed failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from ultraviolet.errors import ToolError
from ultraviolet.tools import STDERR_TAIL_LINES, ToolsChroot, run_host


def test_failure_raises_tool_error_with_command_code_and_stderr_tail() -> None:
    script = "for i in $(seq 1 100); do echo line$i >&2; done; exit 3"
    with pytest.raises(ToolError) as caught:
        run_host(["sh", "-c", script])
    error = caught.value
    assert error.returncode == 3
    assert error.argv[:2] == ["sh", "-c"]
    lines = error.stderr_tail.splitlines()
    assert lines[-1] == "line100"
    assert len(lines) == STDERR_TAIL_LINES


def test_missing_program_is_a_tool_error() -> None:
    with pytest.raises(ToolError) as caught:
        run_host(["/nonexistent/program"])
    assert caught.value.returncode is None


def test_environment_is_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ULTRAVIOLET_LEAK_CHECK", "leaked")
    result = run_host(["sh", "-c", "echo ${ULTRAVIOLET_LEAK_CHECK:-clean}"], env={"EXTRA": "x"})
    assert result.text.strip() == "clean"


def test_stdin_is_dev_null_unless_input_given() -> None:
    assert run_host(["cat"], timeout=10).stdout == b""
    assert run_host(["cat"], input=b"data").stdout == b"data"


def test_check_false_returns_the_exit_code() -> None:
    assert run_host(["sh", "-c", "exit 5"], check=False).returncode == 5


def test_timeout_is_a_tool_error() -> None:
    with pytest.raises(ToolError, match="timed out"):
        run_host(["sleep", "5"], timeout=0.2)


def test_streaming_hands_over_each_line() -> None:
    seen: list[str] = []
    result = run_host(["sh", "-c", "echo one; echo two >&2"], stream=seen.append)
    assert sorted(seen) == ["one", "two"]
    assert result.returncode == 0


@pytest.mark.oracle
def test_chroot_binds_host_paths_at_the_same_path(
    tools_chroot: ToolsChroot, tmp_path: Path
) -> None:
    (tmp_path / "input").write_text("from the host")
    result = tools_chroot.run(
        ["sh", "-c", "cat input > output; . /etc/os-release; echo $VERSION_CODENAME"],
        binds=[tmp_path],
        cwd=tmp_path,
    )
    assert result.text.strip() == "trixie"
    assert (tmp_path / "output").read_text() == "from the host"


@pytest.mark.oracle
def test_chroot_failure_names_the_tool(tools_chroot: ToolsChroot) -> None:
    with pytest.raises(ToolError) as caught:
        tools_chroot.run(["veritysetup", "format", "/nonexistent", "/nonexistent2"])
    assert caught.value.argv[:2] == ["[tools]", "veritysetup"]
    assert caught.value.returncode not in (0, None)
