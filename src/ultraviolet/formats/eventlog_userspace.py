"""systemd's userspace measurement log, /run/log/systemd/tpm2-measure.log (importable from
formats.eventlog): a JSON-SEQ (RFC 7464) file, each record 0x1E, a CEL-JSON-like object {"pcr",
"digests": [{"hashAlg", "digest"}], "content_type", "content"}, and a line feed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ultraviolet.formats import pcr as pcr_math
from ultraviolet.formats._reader import Bytes
from ultraviolet.formats.eventlog_names import EventLogError
from ultraviolet.formats.tpm import HASH_ALGORITHMS

RECORD_SEPARATOR = 0x1E  # RFC 7464


def _check_bank(bank: str, where: str) -> None:
    if bank not in pcr_math.BANKS:
        raise EventLogError(where, f"cannot replay bank {bank!r}; known: {pcr_math.BANKS}")


@dataclass(frozen=True)
class UserspaceEvent:
    """One record of /run/log/systemd/tpm2-measure.log."""

    offset: int  # of the record's 0x1E
    pcr: int | None  # None for records of other registers (NvPCRs of newer systemd)
    digests: Mapping[str, bytes]
    content_type: str | None
    content: Mapping[str, Any]  # the JSON object as written

    @property
    def event_type(self) -> str | None:
        value = self.content.get("eventType")
        return value if isinstance(value, str) else None

    @property
    def string(self) -> str | None:
        """What was measured, for systemd's string measurements ("enter-initrd", ...)."""
        value = self.content.get("string")
        return value if isinstance(value, str) else None


_DIGEST_SIZES = {name: size for name, size, _ in HASH_ALGORITHMS.values()}


def _userspace_digests(items: object, fail: Callable[[str], EventLogError]) -> dict[str, bytes]:
    if not isinstance(items, list) or not items:
        raise fail('"digests" is not a non-empty list')
    digests: dict[str, bytes] = {}
    for item in items:
        if not isinstance(item, dict):
            raise fail("a digest is not an object")
        bank, text = item.get("hashAlg"), item.get("digest")
        if not isinstance(bank, str) or not isinstance(text, str):
            raise fail('a digest lacks a string "hashAlg" or "digest"')
        try:
            value = bytes.fromhex(text)
        except ValueError as exc:
            raise fail(f"{bank} digest is not hex") from exc
        if bank in _DIGEST_SIZES and len(value) != _DIGEST_SIZES[bank]:
            raise fail(f"a {bank} digest of {len(value)} bytes")
        if bank in digests:
            raise fail(f"a second {bank} digest")
        digests[bank] = value
    return digests


def _userspace_event(text: bytes, offset: int) -> UserspaceEvent:
    def fail(message: str) -> EventLogError:
        return EventLogError("tpm2-measure.log record", message, offset)

    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise fail(f"not JSON: {exc}") from exc
    return userspace_event_of(record, offset)


def userspace_event_of(record: object, offset: int, *, keep_content: bool = True) -> UserspaceEvent:
    """One record's event from its decoded JSON (EventLogError if it is not one); its content
    {} unless `keep_content` (replay reads only the digests)."""

    def fail(message: str) -> EventLogError:
        return EventLogError("tpm2-measure.log record", message, offset)

    if not isinstance(record, dict):
        raise fail("not a JSON object")
    pcr = record.get("pcr")
    if pcr is not None and (isinstance(pcr, bool) or not isinstance(pcr, int) or pcr < 0):
        raise fail(f'"pcr" is {pcr!r}, not a PCR index')
    content_type = record.get("content_type")
    if content_type is not None and not isinstance(content_type, str):
        raise fail('"content_type" is not a string')
    content = record.get("content", {})
    if not isinstance(content, dict):
        raise fail('"content" is not an object')
    digests = _userspace_digests(record.get("digests"), fail)
    # As for firmware events (eventlog._read_agile_events_fast): fill the frozen dataclass's
    # fields directly, the verifier reads every record of every boot.
    event: UserspaceEvent = object.__new__(UserspaceEvent)
    event.__dict__.update(
        offset=offset,
        pcr=pcr,
        digests=digests,
        content_type=content_type,
        content=content if keep_content else {},
    )
    return event


def parse_userspace_log(data: Bytes) -> tuple[UserspaceEvent, ...]:
    """Records of a JSON-SEQ userspace measurement log, in order."""
    raw = bytes(data)
    if raw and raw[0] != RECORD_SEPARATOR:
        raise EventLogError("tpm2-measure.log", "does not start with 0x1E (JSON-SEQ)", 0)
    events = []
    starts, separator = [], bytes([RECORD_SEPARATOR])
    at = raw.find(separator)
    while at >= 0:
        starts.append(at)
        at = raw.find(separator, at + 1)
    for start, end in itertools.pairwise([*starts, len(raw)]):
        body = raw[start + 1 : end]
        if not body.strip():
            continue  # RFC 7464: consecutive separators are not empty records
        if not body.endswith(b"\n"):
            raise EventLogError("tpm2-measure.log record", "truncated: no final line feed", start)
        events.append(_userspace_event(body, start))
    return tuple(events)


def replay_userspace(
    events: Sequence[UserspaceEvent],
    bank: str = "sha256",
    start: Mapping[int, bytes] | None = None,
) -> dict[int, bytes]:
    """PCR values after the userspace events, from `start` (e.g. the firmware log's replay)
    or zeros. Events without a `bank` digest were not extended into that bank."""
    _check_bank(bank, "userspace log replay")
    values, zero, hasher = dict(start or {}), pcr_math.zero_pcr(bank), getattr(hashlib, bank)
    for event in events:
        value = event.digests.get(bank)
        if event.pcr is None or value is None:
            continue
        current = values.get(event.pcr, zero)
        if len(value) != len(current):
            try:
                pcr_math.extend(current, value, bank)  # raises, naming both sizes
            except pcr_math.PcrError as exc:
                raise EventLogError("userspace log replay", exc.detail, event.offset) from exc
        values[event.pcr] = hasher(current + value).digest()
    return values
