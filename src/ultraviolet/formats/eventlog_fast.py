"""Fast paths for the verifier: what replay and the PCR 4/7 checks need of a log, read without
building a frozen dataclass per record.

The verifier reads every node's logs on the first evidence after a boot (a fleet's reboot storm),
so this is its hot path. Each function here answers exactly what the checked reader in
eventlog.py (parse_event_log, replay, Event.content, parse_userspace_log) answers, or None
where the input is anything but the common well-formed case: the caller then takes the checked
path, which raises the precise error. tests/formats/test_eventlog.py holds them equal on
generated and real logs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import struct
from collections.abc import Collection
from dataclasses import dataclass

from ultraviolet.errors import FormatError
from ultraviolet.formats._reader import Reader
from ultraviolet.formats.eventlog import (
    EV_NO_ACTION,
    RECORD_SEPARATOR,
    SHA1_SIZE,
    STARTUP_LOCALITY_SIGNATURE,
    Event,
    EventLogError,
    SpecId,
    UserspaceEvent,
    _is_spec_id_event,
    _read_legacy_event,
    _read_spec_id,
    _RecordLayout,
    userspace_event_of,
)

_HASHERS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha384": hashlib.sha384}
_HASHERS["sha512"] = hashlib.sha512
_VARIABLE_HEAD = struct.Struct("<16sQQ")
_LEGACY_HEAD = struct.Struct("<II20sI")  # TCG_PCClientPCREvent up to the data
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_JSON = json.JSONDecoder()


@dataclass(frozen=True)
class FirmwareScan:
    """A crypto-agile log as replay sees it, plus the full events of a few PCRs."""

    spec_id: SpecId
    event_counts: dict[int, int]  # PCR -> measured events (EV_NO_ACTION excluded)
    replayed: dict[int, bytes]  # = replay(parse_event_log(data), bank)
    kept: dict[int, list[Event]]  # PCR -> its measured events, for the PCRs asked for


def scan_firmware_log(data: bytes, bank: str, keep: Collection[int]) -> FirmwareScan | None:
    """parse_event_log + replay in `bank` in one pass, or None (then take the checked path)."""
    if len(data) < _LEGACY_HEAD.size:
        return None
    end = _LEGACY_HEAD.size + _LEGACY_HEAD.unpack_from(data)[-1]
    header = _spec_id_and_layout(data[:end]) if end <= len(data) else None
    if header is None or bank not in header[0].banks or bank not in _HASHERS:
        return None
    spec_id, layout = header
    field = dict(layout.digest_fields)[bank]
    extended = _scan_records(data, end, layout, field, frozenset(keep))
    if extended is None:
        return None
    digests, locality, kept = extended
    return FirmwareScan(
        spec_id,
        {pcr: len(values) for pcr, values in digests.items()},
        _replay(digests, bank, locality),
        kept,
    )


@functools.lru_cache(maxsize=64)
def _spec_id_and_layout(record: bytes) -> tuple[SpecId, _RecordLayout] | None:
    """The Spec ID record's meaning, None if it is not one. Every log of a firmware build
    starts with the same record, so it is read once (a pure function of these bytes)."""
    try:
        first = _read_legacy_event(Reader(record, "TCG event log", EventLogError), 0)
        if not _is_spec_id_event(first) or first.digests["sha1"] != bytes(SHA1_SIZE):
            return None
        spec_id = _read_spec_id(first.data, first.data_offset)
    except FormatError:
        return None
    return spec_id, _RecordLayout.of(spec_id)


_Scanned = tuple[dict[int, list[bytes]], int | None, dict[int, list[Event]]]


def _scan_records(
    data: bytes, offset: int, layout: _RecordLayout, field: int, keep: frozenset[int]
) -> _Scanned | None:
    """Each PCR's digests in `field`'s bank, the StartupLocality and the kept events; None at
    the first record that is not the Spec ID's layout or not a plain StartupLocality."""
    end, unpack, head_size = len(data), layout.head.unpack_from, layout.head.size
    algorithms, count = layout.algorithms, len(layout.algorithms)
    digests: dict[int, list[bytes]] = {}
    kept: dict[int, list[Event]] = {}
    locality: int | None = None
    index = 1
    while offset < end:
        data_offset = offset + head_size
        if data_offset > end:
            return None
        fields = unpack(data, offset)
        stop = data_offset + fields[-1]
        if fields[2] != count or fields[3:-1:2] != algorithms or stop > end:
            return None
        pcr, event_type = fields[0], fields[1]
        if event_type == EV_NO_ACTION:
            if pcr == 0 and data.startswith(STARTUP_LOCALITY_SIGNATURE, data_offset):
                if stop - data_offset != 17:  # replay would raise on its content
                    return None
                if locality is None:
                    locality = data[data_offset + 16]
        else:
            values = digests.get(pcr)
            if values is None:
                values = digests[pcr] = []
            values.append(fields[field])
            if pcr in keep:
                event: Event = object.__new__(Event)  # as eventlog._read_agile_events_fast
                event.__dict__.update(
                    index=index,
                    offset=offset,
                    data_offset=data_offset,
                    pcr=pcr,
                    event_type=event_type,
                    digests={bank: fields[at] for bank, at in layout.digest_fields},
                    data=data[data_offset:stop],
                )
                kept.setdefault(pcr, []).append(event)
        index += 1
        offset = stop
    return digests, locality, kept


def _replay(digests: dict[int, list[bytes]], bank: str, locality: int | None) -> dict[int, bytes]:
    hasher = _HASHERS[bank]
    zero = bytes(hasher().digest_size)
    values = {}
    for pcr, extends in digests.items():
        current = zero
        if pcr == 0 and locality is not None:
            current = zero[:-1] + bytes([locality])
        for digest in extends:
            current = hasher(current + digest).digest()
        values[pcr] = current
    return values


def variable_name_and_value(data: bytes) -> tuple[str, bytes] | None:
    """UefiVariable.name and .data of EV_EFI_VARIABLE_* event data, or None where
    Event.content() would raise."""
    if len(data) < _VARIABLE_HEAD.size:
        return None
    _, name_units, value_size = _VARIABLE_HEAD.unpack_from(data)
    name_end = _VARIABLE_HEAD.size + 2 * name_units
    value_end = name_end + value_size
    if value_end > len(data):
        return None
    try:
        name = data[_VARIABLE_HEAD.size : name_end].decode("utf-16-le")
    except UnicodeDecodeError:
        return None
    return name, data[name_end:value_end]


def read_userspace_log(data: bytes, *, content: bool = True) -> tuple[UserspaceEvent, ...] | None:
    """parse_userspace_log of an ASCII log, or None (then take the checked path). Without
    `content`, every event's content is {} (replay reads only the digests)."""
    if not data or data[0] != RECORD_SEPARATOR or not data.isascii() or b"\0" in data:
        return None  # (json.loads of bytes would guess UTF-16/32 from NUL bytes)
    events = []
    offset = 0
    for body in data.decode("ascii").split("\x1e")[1:]:
        start, offset = offset, offset + 1 + len(body)
        at = _JSON_SPACE.match(body).end()  # type: ignore[union-attr]
        if at == len(body):
            continue  # RFC 7464: consecutive separators are not empty records
        if not body.endswith("\n"):
            return None
        try:
            record, after = _JSON.raw_decode(body, at)
        except (ValueError, RecursionError):
            return None
        if _JSON_SPACE.match(body, after).end() != len(body):  # type: ignore[union-attr]
            return None
        try:
            events.append(userspace_event_of(record, start, keep_content=content))
        except EventLogError:
            return None
    return tuple(events)
