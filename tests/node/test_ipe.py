"""IPE audit records for the agent: auditd/kernel-log lines and journald's JSON entries (MESSAGE
is "TYPENAME text", the kernel's stamp is split into _SOURCE_REALTIME_TIMESTAMP and _AUDIT_ID,
as journald-audit.c writes them), and the cursors that make each record reported once."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ultraviolet.errors import AttestationError
from ultraviolet.formats.evidence import IpeEvent
from ultraviolet.node import ipe
from ultraviolet.node.ipe import (
    AuditLogSource,
    JournalSource,
    parse_audit_lines,
    parse_journal_json,
)

RECORD = (
    'ipe_op=EXECUTE ipe_hook=BPRM_CHECK enforcing=1 pid=297 comm="sh" path="/tmp/uvtrue" '
    'dev="tmpfs" ino=3897 rule="DEFAULT action=DENY"'
)


def test_audit_lines_of_auditd_and_the_kernel_log() -> None:
    data = (
        f"type=1420 msg=audit(1727380006.442:117): {RECORD}\n"
        "type=SYSCALL msg=audit(1727380006.442:117): arch=c000003e syscall=59 success=no\n"
        f"[   12.5] audit: type=1420 audit(1727380007.001:120): {RECORD}\n"
        "type=1421 msg=audit(1727380008.000:121): policy_name=x\n"
        f"type=1420 msg=audit(1727380009.000:122): {RECORD}"  # no newline yet: still being written
    ).encode()
    found = parse_audit_lines(data)
    assert [event for event, _ in found] == [
        IpeEvent("audit(1727380006.442:117)", RECORD),
        IpeEvent("audit(1727380007.001:120)", RECORD),
    ]
    second_line_end = data.index(b"\n", found[0][1]) + 1
    assert found[1][1] == data.index(b"\n", second_line_end) + 1
    assert parse_audit_lines(data, found[1][1]) == []


def test_audit_log_cursor_reports_each_record_once(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    source = AuditLogSource(log, tmp_path / "state")
    assert source.collect() == ((), "0")  # no file yet
    log.write_text(f"type=1420 msg=audit(1.000:1): {RECORD}\n")
    events, cursor = source.collect()
    assert len(events) == 1
    assert source.collect() == (events, cursor)  # not committed: reported again
    source.commit(cursor)
    assert source.collect()[0] == ()
    with log.open("a") as out:
        out.write(f"type=1420 msg=audit(2.000:2): {RECORD}\n")
    assert [e.timestamp for e in source.collect()[0]] == ["audit(2.000:2)"]
    log.write_text(f"type=1420 msg=audit(3.000:3): {RECORD}\n")  # rotated: shorter than cursor
    source.commit(str(10**6))
    assert [e.timestamp for e in source.collect()[0]] == ["audit(3.000:3)"]


def test_a_flood_is_cut_and_the_rest_follows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ipe, "MAX_EVENTS", 3)
    log = tmp_path / "audit.log"
    log.write_text("".join(f"type=1420 msg=audit({n}.000:{n}): {RECORD}\n" for n in range(5)))
    source = AuditLogSource(log, tmp_path)
    events, cursor = source.collect()
    assert [e.timestamp for e in events] == [f"audit({n}.000:{n})" for n in range(3)]
    source.commit(cursor)
    assert [e.timestamp for e in source.collect()[0]] == ["audit(3.000:3)", "audit(4.000:4)"]


def _entry(cursor: str, audit_type: str, message: object, audit_id: str = "117") -> str:
    return json.dumps(
        {
            "__CURSOR": cursor,
            "__REALTIME_TIMESTAMP": "1727380006450000",
            "_SOURCE_REALTIME_TIMESTAMP": "1727380006442000",
            "_AUDIT_TYPE": audit_type,
            "_AUDIT_ID": audit_id,
            "MESSAGE": message,
        }
    )


def test_journal_entries() -> None:
    text = "\n".join(
        [
            _entry("c1", "1420", f"IPE_ACCESS {RECORD}"),
            _entry("c2", "1300", "SYSCALL arch=c000003e"),
            _entry("c3", "1420", list(f"AUDIT1420 {RECORD}".encode()), "118"),
        ]
    )
    events, last = parse_journal_json(text)
    assert events == [
        (IpeEvent("audit(1727380006.442:117)", RECORD), "c1"),
        (IpeEvent("audit(1727380006.442:118)", RECORD), "c3"),
    ]
    assert last == "c3"
    assert parse_journal_json("") == ([], None)
    with pytest.raises(AttestationError, match="line 1: not JSON"):
        parse_journal_json("{")
    odd = '{"__CURSOR": "c", "_AUDIT_TYPE": "1420", "MESSAGE": [300, 65, "x"]}'
    assert parse_journal_json(odd) == ([(IpeEvent("audit(0.000:0)", "A"), "c")], "c")
    with pytest.raises(AttestationError, match="no __CURSOR"):
        parse_journal_json('{"MESSAGE": "x"}')


def test_journal_source_starts_at_this_boot_then_follows_its_cursor(tmp_path: Path) -> None:
    """journalctl here is a shell that records its arguments and prints recorded entries."""
    output = tmp_path / "journal.json"
    output.write_text(_entry("s=1;i=5", "1420", f"IPE_ACCESS {RECORD}") + "\n")
    fake = ["sh", "-c", 'printf "%s\\n" "$@" > "$0.args"; cat "$0"', str(output)]
    source = JournalSource(tmp_path / "state", command=fake)
    events, cursor = source.collect()
    assert [e.record for e in events] == [RECORD] and cursor == "s=1;i=5"
    called = (tmp_path / "journal.json.args").read_text().splitlines()
    assert "--boot" in called and "_TRANSPORT=audit" in called and "_AUDIT_TYPE=1420" in called
    source.commit(cursor)
    output.write_text("")
    assert source.collect() == ((), "s=1;i=5")
    assert "--after-cursor=s=1;i=5" in (tmp_path / "journal.json.args").read_text().splitlines()


@pytest.mark.skipif(shutil.which("journalctl") is None, reason="no journalctl on this machine")
def test_the_real_journalctl_takes_the_query_and_a_bad_cursor_is_dropped(tmp_path: Path) -> None:
    source = JournalSource(tmp_path)
    events, _ = source.collect()  # this machine's journal, whatever it holds
    assert all(isinstance(event, IpeEvent) for event in events)
    source.commit("not-a-cursor")
    with pytest.raises(AttestationError, match="journalctl failed"):
        source.collect()
    assert not source.cursor_file.exists()
    again, _ = source.collect()  # from this boot again: no error
    assert all(isinstance(event, IpeEvent) for event in again)


@given(st.binary(max_size=400))
def test_audit_lines_never_fail(data: bytes) -> None:
    for event, end in parse_audit_lines(data):
        assert 0 < end <= len(data) and data[end - 1 : end] == b"\n"
        assert event.timestamp.startswith("audit(")


@given(st.text(max_size=300))
def test_journal_parser_fails_only_with_attestation_errors(text: str) -> None:
    with contextlib.suppress(AttestationError):
        parse_journal_json(text)
