"""Where the agent finds IPE's audit records (AUDIT_IPE_ACCESS, type 1420) since its last report.

Two sources, each with a cursor kept in the agent's state directory and advanced only once the
verifier has taken the evidence that carried the records (so none is lost to a failed POST):
- the journal (journald's audit transport keeps every record; the kernel log may rate-limit
  them): `journalctl _TRANSPORT=audit _AUDIT_TYPE=1420 -o json --after-cursor=...`;
- an audit.log-style text file (auditd's /var/log/audit/audit.log, or a test's file):
  `type=1420 audit(1727380006.442:117): ipe_op=EXECUTE ... rule="DEFAULT action=DENY"`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ultraviolet.errors import AttestationError
from ultraviolet.formats.evidence import IpeEvent
from ultraviolet.tools import run_host

AUDIT_IPE_ACCESS = 1420
# auditd: "type=1420 msg=audit(...): ..."; the kernel log: "audit: type=1420 audit(...): ...".
_AUDIT_LINE = re.compile(
    r"^(?:.*?audit: )?type=(?:1420|IPE_ACCESS) (?:msg=)?(audit\([0-9.]+:[0-9]+\)): ?(.*)$"
)
# journald writes MESSAGE as "TYPENAME text": IPE_ACCESS, or AUDIT1420 where unknown to it.
_JOURNAL_TYPE_PREFIX = re.compile(r"^(?:IPE_ACCESS|AUDIT1420) ")
MAX_EVENTS = 1000  # per report: a flood of denials must not make the evidence unbounded


class IpeSource(Protocol):
    def collect(self) -> tuple[tuple[IpeEvent, ...], str]:
        """The records since the committed cursor, and the cursor after them."""
        ...

    def commit(self, cursor: str) -> None:
        """The verifier has the records up to `cursor`."""
        ...


def parse_audit_lines(data: bytes, start: int = 0) -> list[tuple[IpeEvent, int]]:
    """IPE access records of the complete lines of an audit.log from byte `start` (other
    record types are skipped), each with the offset after its line."""
    found = []
    offset = start
    while (end := data.find(b"\n", offset)) >= 0:
        line = data[offset:end].decode("utf-8", "replace")
        offset = end + 1
        match = _AUDIT_LINE.match(line)
        if match:
            found.append((IpeEvent(match.group(1), match.group(2)), offset))
    return found


def parse_journal_json(text: str) -> tuple[list[tuple[IpeEvent, str]], str | None]:
    """IPE access records of `journalctl -o json` output, each with its entry's cursor, and
    the last entry's cursor."""
    events = []
    cursor = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise AttestationError(f"journalctl output line {number}: not JSON: {exc}") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("__CURSOR"), str):
            raise AttestationError(f"journalctl output line {number}: no __CURSOR")
        cursor = entry["__CURSOR"]
        if entry.get("_AUDIT_TYPE") != str(AUDIT_IPE_ACCESS):
            continue
        message = entry.get("MESSAGE")
        if isinstance(message, list):  # journald's encoding of a non-UTF-8 message
            raw = bytes(b for b in message if isinstance(b, int) and 0 <= b < 256)
            message = raw.decode("utf-8", "replace")
        if not isinstance(message, str):
            continue
        event = IpeEvent(_journal_stamp(entry), _JOURNAL_TYPE_PREFIX.sub("", message))
        events.append((event, cursor))
    return events, cursor


def _journal_stamp(entry: dict[str, object]) -> str:
    """audit(SECONDS.MILLIS:SERIAL), the kernel's stamp, from journald's fields."""
    micros = entry.get("_SOURCE_REALTIME_TIMESTAMP") or entry.get("__REALTIME_TIMESTAMP")
    serial = entry.get("_AUDIT_ID", "0")
    try:
        seconds, rest = divmod(int(str(micros)), 1_000_000)
    except ValueError:
        seconds, rest = 0, 0
    return f"audit({seconds}.{rest // 1000:03d}:{serial})"


@dataclass
class AuditLogSource:
    """Records appended to an audit.log-style file; the cursor is a byte offset (a file that
    shrank was rotated: read it from the start)."""

    path: Path
    state_dir: Path

    @property
    def cursor_file(self) -> Path:
        return self.state_dir / "ipe-auditlog.cursor"

    def collect(self) -> tuple[tuple[IpeEvent, ...], str]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return (), "0"
        except OSError as exc:
            raise AttestationError(f"cannot read {self.path}: {exc}") from exc
        start = _committed_offset(self.cursor_file)
        if start > len(data):
            start = 0
        found = parse_audit_lines(data, start)
        if len(found) > MAX_EVENTS:
            found = found[:MAX_EVENTS]
            return tuple(event for event, _ in found), str(found[-1][1])
        end = data.rfind(b"\n", start) + 1 or start  # whole lines only
        return tuple(event for event, _ in found), str(end)

    def commit(self, cursor: str) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.cursor_file.write_text(cursor + "\n")


def _committed_offset(path: Path) -> int:
    try:
        return int(path.read_text().strip() or "0")
    except (FileNotFoundError, ValueError):
        return 0


@dataclass
class JournalSource:
    """The journal's audit records; the first report of a state directory starts at this boot."""

    state_dir: Path
    command: Sequence[str] = ("journalctl",)

    @property
    def cursor_file(self) -> Path:
        return self.state_dir / "ipe-journal.cursor"

    def collect(self) -> tuple[tuple[IpeEvent, ...], str]:
        argv = [
            *self.command,
            "--no-pager",
            "-o",
            "json",
            "--output-fields=MESSAGE,_AUDIT_TYPE,_AUDIT_ID,_SOURCE_REALTIME_TIMESTAMP",
            "_TRANSPORT=audit",
            f"_AUDIT_TYPE={AUDIT_IPE_ACCESS}",
        ]
        cursor = self.cursor_file.read_text().strip() if self.cursor_file.exists() else ""
        argv += [f"--after-cursor={cursor}"] if cursor else ["--boot"]
        result = run_host(argv, timeout=60, check=False)
        if result.returncode != 0:
            if cursor:  # e.g. a damaged cursor file: next time start again from this boot
                self.cursor_file.unlink(missing_ok=True)
            stderr = result.stderr.decode("utf-8", "replace").strip()
            raise AttestationError(f"journalctl failed ({result.returncode}): {stderr}")
        found, last = parse_journal_json(result.text)
        if len(found) > MAX_EVENTS:
            found = found[:MAX_EVENTS]
            last = found[-1][1]
        return tuple(event for event, _ in found), last or cursor

    def commit(self, cursor: str) -> None:
        if cursor:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.cursor_file.write_text(cursor + "\n")
