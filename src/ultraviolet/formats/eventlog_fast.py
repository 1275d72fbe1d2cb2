"""Fast paths for the verifier: what replay and the PCR 4/7 checks need of a log, read without
building a frozen dataclass per record.

The verifier reads every node's logs on the first evidence after a boot (a fleet's reboot storm),
so this is its hot path. Each function here answers exactly what the checked reader in
eventlog.py (parse_event_log, replay, Event.content, parse_userspace_log) answers, or None
where the input is anything but the common well-formed case: the caller then takes the checked
path, which raises the precise error. tests/formats/test_eventlog_fast.py holds them equal on
generated, mutated and real logs.

Firmware log: one struct.unpack per record (only the scanned bank's digest read), the digest
count and algorithm IDs compared as integers, each digest kept in its PCR's list (replay hashes
only the PCRs a quote carries), and only PCR 4 and 7 events kept whole. Userspace log: a log
whose records are all in systemd's own compact form with the same banks is read by one findall;
one in that form otherwise by one regular expression per record (only a content object is left
to json); any other goes record by record through the JSON decoder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import struct
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, overload

from ultraviolet.errors import FormatError
from ultraviolet.formats._reader import Reader
from ultraviolet.formats.eventlog import (
    EV_NO_ACTION,
    RECORD_SEPARATOR,
    SHA1_SIZE,
    STARTUP_LOCALITY_SIGNATURE,
    Event,
    EventLog,
    EventLogError,
    SpecId,
    UserspaceEvent,
    _is_spec_id_event,
    _read_legacy_event,
    _read_spec_id,
    replay,
    startup_locality,
    userspace_event_of,
)
from ultraviolet.formats.eventlog_userspace import _DIGEST_SIZES

UserspaceDigests = tuple[int, int | None, Mapping[str, bytes]]  # offset, PCR, bank -> digest
_HASHERS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha384": hashlib.sha384}
_HASHERS["sha512"] = hashlib.sha512
_VARIABLE_HEAD = struct.Struct("<16sQQ")
_LEGACY_HEAD = struct.Struct("<II20sI")  # TCG_PCClientPCREvent up to the data
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_JSON = json.JSONDecoder()


# A measured event of a kept PCR as the scan leaves it: (offset, pcr, event type, its digest in
# the scanned bank, data, None: the place the checked reader's tuples hold the Event).
# FirmwareScan.event() makes the Event; the verifier makes one only for an event it reports.
KeptEvent = tuple[int, int, int, bytes, bytes, None]


class _BankHead(NamedTuple):
    """TCG_PCR_EVENT2 up to the data size as the scan for one bank reads it: the digest count
    and algorithm IDs as integers (small ones, so no object is made for them), that bank's
    digest, the other banks' digests skipped. One unpack and one or two tuple comparisons
    check a record's layout.
    `common`: the layout nearly every firmware writes (sha256 alone, or sha1 then sha256,
    scanning the last bank), unpacked as (pcr, type, count, algorithm, algorithm or b"" for
    a single bank, digest, size): seven names, no tuple indexed, a third faster."""

    head: struct.Struct
    digest: int  # index of the bank's digest in the fields
    ids_before: tuple[int | bytes, ...]  # the fields from index 2 up to the digest must be these
    ids_after: tuple[int, ...]  # and those after it, but for the data size
    common: bool = False


@dataclass(frozen=True)
class _ScanLayout:
    """TCG_PCR_EVENT2 up to the data size when it carries every bank of the Spec ID in order,
    as firmware writes it."""

    head: struct.Struct  # every field, each digest as bytes: for the Event of a record
    digest_fields: tuple[tuple[str, int], ...]  # (bank, index of its digest in head's fields)
    banks: Mapping[str, _BankHead]  # what the scan of each bank unpacks

    @classmethod
    def of(cls, spec_id: SpecId) -> _ScanLayout | None:
        if not spec_id.algorithms:
            return None
        (_, first_size), *others = spec_id.algorithms
        fields = f"<II6s{first_size}s" + "".join(f"2s{size}s" for _, size in others) + "I"
        digests = tuple((bank, 3 + 2 * number) for number, bank in enumerate(spec_id.banks))
        heads = {bank: _bank_head(spec_id, bank) for bank in spec_id.banks}
        return cls(struct.Struct(fields), digests, heads)


def _bank_head(spec_id: SpecId, bank: str) -> _BankHead:
    banks = spec_id.banks
    kept = banks.index(bank)  # (a Spec ID lists each algorithm once)
    if kept == len(banks) - 1 and len(banks) <= 2:
        return _common_head(spec_id)
    fields, ids, digest = "<IIIH", [len(banks), spec_id.algorithms[0][0]], 0
    for number, (algorithm, size) in enumerate(spec_id.algorithms):
        if number:
            fields += "H"
            ids.append(algorithm)
        if number == kept:
            digest = 2 + len(ids)
            fields += f"{size}s"
        else:
            fields += f"{size}x"
    before, after = tuple(ids[: digest - 2]), tuple(ids[digest - 2 :])
    return _BankHead(struct.Struct(fields + "I"), digest, before, after)


def _common_head(spec_id: SpecId) -> _BankHead:
    """The _BankHead of the last of one or two banks (a "0s" field, always b"", stands for
    the second algorithm of a single bank)."""
    (first, first_size), *other = spec_id.algorithms
    ids: tuple[int | bytes, ...]
    if other:
        ((second, size),) = other
        head, ids = f"<IIIH{first_size}xH{size}sI", (2, first, second)
    else:
        head, ids = f"<IIIH0s{first_size}sI", (1, first, b"")
    return _BankHead(struct.Struct(head), 5, ids, (), common=True)


@dataclass(frozen=True)
class PcrDigests:
    """What replay reads of a log in one bank: each PCR's measured digests in log order, and
    the StartupLocality PCR 0 starts from."""

    bank: str
    digests: Mapping[int, tuple[bytes, ...]]
    locality: int | None

    def replay(self, pcrs: Collection[int] | None = None) -> dict[int, bytes]:
        """replay(parse_event_log(log), bank), of the PCRs in `pcrs` only (every PCR if None):
        a verifier compares only the PCRs a quote carries, so it hashes only those."""
        hasher = _HASHERS[self.bank]
        zero = bytes(hasher().digest_size)
        values: dict[int, bytes] = {}
        for pcr, digests in self.digests.items():
            if pcrs is not None and pcr not in pcrs:
                continue
            current = zero if pcr or self.locality is None else zero[:-1] + bytes((self.locality,))
            for digest in digests:
                current = hasher(current + digest).digest()
            values[pcr] = current
        return values


def pcr_digests(log: EventLog, bank: str) -> PcrDigests:
    """The PcrDigests of a parsed log (EventLogError where replay(log, bank) raises)."""
    replay(log, bank)  # says what is wrong, and where, with a log that cannot be replayed
    digests: dict[int, list[bytes]] = {}
    for event in log.events:
        if event.event_type != EV_NO_ACTION:
            digests.setdefault(event.pcr, []).append(event.digests[bank])
    frozen = {pcr: tuple(values) for pcr, values in digests.items()}
    return PcrDigests(bank, frozen, startup_locality(log))


@dataclass(frozen=True)
class FirmwareScan:
    """A crypto-agile log as replay sees it, plus the measured events of a few PCRs."""

    spec_id: SpecId
    digests: PcrDigests  # replay(parse_event_log(data), bank) = digests.replay()
    kept: dict[int, list[KeptEvent]]  # PCR -> its measured events, for the PCRs asked for
    layout: _ScanLayout
    data: bytes  # the log
    first: int  # offset of the record after the Spec ID record

    def event(self, kept: KeptEvent) -> Event:
        """The Event parse_event_log reads for this record."""
        offset, pcr, event_type, _, data, _ = kept
        head = self.layout.head
        fields = head.unpack_from(self.data, offset)
        digests = {bank: fields[at] for bank, at in self.layout.digest_fields}
        index, at = 1, self.first  # (counted here: the scan does not, for every record)
        while at < offset:
            at += head.size + head.unpack_from(self.data, at)[-1]
            index += 1
        return Event(index, offset, offset + head.size, pcr, event_type, digests, data)

    def events(self, pcr: int) -> list[Event]:
        return [self.event(kept) for kept in self.kept.get(pcr, [])]


def scan_firmware_log(data: bytes, bank: str, keep: Collection[int]) -> FirmwareScan | None:
    """parse_event_log + replay in `bank` in one pass, or None (then take the checked path)."""
    if len(data) < _LEGACY_HEAD.size:
        return None
    end = _LEGACY_HEAD.size + _LEGACY_HEAD.unpack_from(data)[-1]
    header = _spec_id_and_layout(data[:end]) if end <= len(data) else None
    if header is None:
        return None
    spec_id, layout = header
    bank_head = layout.banks.get(bank)
    if bank_head is None or bank not in _HASHERS:  # the log has no such bank, or replay knows none
        return None
    scanned = _scan_records(data, end, bank_head, frozenset(keep))
    if scanned is None:
        return None
    digests, locality, kept = scanned
    return FirmwareScan(spec_id, PcrDigests(bank, digests, locality), kept, layout, data, end)


@functools.lru_cache(maxsize=64)
def _spec_id_and_layout(record: bytes) -> tuple[SpecId, _ScanLayout] | None:
    """The Spec ID record's meaning, None if it is not one. Every log of a firmware build
    starts with the same record, so it is read once (a pure function of these bytes)."""
    try:
        first = _read_legacy_event(Reader(record, "TCG event log", EventLogError), 0)
        if not _is_spec_id_event(first) or first.digests["sha1"] != bytes(SHA1_SIZE):
            return None
        spec_id = _read_spec_id(first.data, first.data_offset)
    except FormatError:
        return None
    layout = _ScanLayout.of(spec_id)
    return None if layout is None else (spec_id, layout)


_Scanned = tuple[dict[int, tuple[bytes, ...]], int | None, dict[int, list[KeptEvent]]]


def _scan_records(
    data: bytes, offset: int, layout: _BankHead, keep: frozenset[int]
) -> _Scanned | None:
    """Each PCR's measured digests in the layout's bank, the StartupLocality and the kept
    events; None at the first record that is not the Spec ID's layout or not a plain
    StartupLocality, or that does not end where the log ends (the record after it cannot be
    read: struct.error)."""
    end, unpack, head_size, common = (
        len(data),
        layout.head.unpack_from,
        layout.head.size,
        layout.common,
    )
    field, ids_before, ids_after = layout.digest, layout.ids_before, layout.ids_after
    count_must, first_must, second_must = ids_before if common else (0, 0, 0)
    digests: dict[int, list[bytes]] = {}
    kept: dict[int, list[KeptEvent]] = {}
    locality: int | None = None
    try:
        while True:  # until the head after the last record cannot be read
            if common:  # the verifier's hot path: unpacked into names, a third faster
                pcr, event_type, count, first, second, digest, size = unpack(data, offset)
                if count != count_must or first != first_must or second != second_must:
                    return None  # another digest count or other algorithms
            else:
                fields = unpack(data, offset)
                if fields[2:field] != ids_before or (
                    ids_after and fields[field + 1 : -1] != ids_after
                ):
                    return None
                pcr, event_type, digest, size = fields[0], fields[1], fields[field], fields[-1]
            if event_type == EV_NO_ACTION:
                if pcr == 0:
                    locality = _startup_locality(data, offset + head_size, size, locality)
                    if locality == _NOT_PLAIN:
                        return None
            else:
                if pcr in digests:
                    digests[pcr].append(digest)
                else:
                    digests[pcr] = [digest]
                if pcr in keep:
                    start = offset + head_size
                    record = (offset, pcr, event_type, digest, data[start : start + size], None)
                    kept.setdefault(pcr, []).append(record)
            offset += head_size + size
    except (struct.error, IndexError):
        if offset != end:  # a record cut short, or one that overruns the log
            return None
    return {pcr: tuple(values) for pcr, values in digests.items()}, locality, kept


_NOT_PLAIN = -1  # a StartupLocality record whose content replay would refuse


def _startup_locality(data: bytes, start: int, size: int, locality: int | None) -> int | None:
    """The locality after an EV_NO_ACTION record of PCR 0 at `start`: the first
    StartupLocality's, or _NOT_PLAIN for one of another size than replay reads."""
    if not data.startswith(STARTUP_LOCALITY_SIGNATURE, start):
        return locality
    if size != 17:
        return _NOT_PLAIN
    return data[start + 16] if locality is None else locality


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
    text = data.decode("ascii")
    systemd = _systemd_log(text, content)
    if systemd is not None:
        return systemd
    events = []
    offset = 0
    for body in text.split("\x1e")[1:]:
        start, offset = offset, offset + 1 + len(body)
        event = _systemd_record(body, start, content)
        if event is None:
            at = _JSON_SPACE.match(body).end()  # type: ignore[union-attr]
            if at == len(body):
                continue  # RFC 7464: consecutive separators are not empty records
            event = _any_record(body, at, start, content)
            if event is None:
                return None
        events.append(event)
    return tuple(events)


def _any_record(body: str, at: int, start: int, content: bool) -> UserspaceEvent | None:
    if not body.endswith("\n"):
        return None
    try:
        record, after = _JSON.raw_decode(body, at)
    except (ValueError, RecursionError):
        return None
    if _JSON_SPACE.match(body, after).end() != len(body):  # type: ignore[union-attr]
        return None
    try:
        return userspace_event_of(record, start, keep_content=content)
    except EventLogError:
        return None


# A record as systemd writes it: compact JSON, its members in this order, strings without
# escapes, up to four digests, and (in a whole log read at once) content of string members.
_TEXT = r'"[^"\\\x00-\x1f]*+"'  # a JSON string without escapes
_DIGEST_ITEM = r'\{"hashAlg":' + _TEXT + r',"digest":' + _TEXT + r"\}"
_SYSTEMD_RECORD = re.compile(
    r'\{"pcr":(0|[1-9][0-9]{0,8}),'
    rf'"digests":\[({_DIGEST_ITEM}(?:,{_DIGEST_ITEM})*)\],'
    rf'"content_type":({_TEXT}),"content":'
)
_DIGESTS = re.compile(r'\{"hashAlg":"([^"]*)","digest":"([^"]*)"\}')
_DIGEST_GROUP = r'\{"hashAlg":"([^"\\\x00-\x1f]*+)","digest":"([0-9a-f]*+)"\}'
_FLAT_OBJECT = rf"\{{(?:{_TEXT}:{_TEXT}(?:,{_TEXT}:{_TEXT})*)?\}}"
_SYSTEMD_LOG_RECORD = re.compile(
    r'\x1e\{"pcr":(0|[1-9][0-9]{0,8}),"digests":\['
    + _DIGEST_GROUP
    + rf"(?:,{_DIGEST_GROUP})?" * 3
    + rf'\],"content_type":"([^"\\\x00-\x1f]*+)","content":({_FLAT_OBJECT})\}}\n'
)


def read_userspace_digests(data: bytes) -> tuple[UserspaceDigests, ...] | None:
    """(offset, pcr, digests) of each event parse_userspace_log reads, or None (then take the
    checked path): all that replay reads, without an event object per record."""
    if data and data[0] == RECORD_SEPARATOR and data.isascii() and b"\0" not in data:
        text = data.decode("ascii")
        digests = _same_banks_log(text)
        if digests is None:
            digests = _systemd_log(text, False, bare=True)
        if digests is not None:
            return digests
    events = read_userspace_log(data, content=False)
    return None if events is None else tuple((e.offset, e.pcr, e.digests) for e in events)


@functools.lru_cache(maxsize=16)
def _same_banks_record(banks: tuple[str, ...]) -> re.Pattern[str] | None:
    """_SYSTEMD_LOG_RECORD for a record with digests in exactly `banks`, in this order, each
    the size of its algorithm (so the hex digits are counted and read without a check), the
    whole record captured first; None for banks of no known size, or one listed twice."""
    if len(set(banks)) != len(banks) or not all(bank in _DIGEST_SIZES for bank in banks):
        return None
    items = ",".join(
        rf'\{{"hashAlg":"{bank}","digest":"([0-9a-f]{{{2 * _DIGEST_SIZES[bank]}}})"\}}'
        for bank in banks
    )
    return re.compile(
        rf'(\x1e\{{"pcr":(0|[1-9][0-9]{{0,8}}),"digests":\[{items}\],'
        rf'"content_type":"[^"\\\x00-\x1f]*+","content":{_FLAT_OBJECT}\}}\n)'
    )


def _same_banks_log(text: str) -> tuple[UserspaceDigests, ...] | None:
    """_systemd_log(text, False, bare=True) of a log whose every record is in systemd's form
    with the first record's banks (a node measures into the same banks all along), else None.
    One findall: the records found are in order and do not overlap, so they are the whole
    log exactly when their lengths add up to its length."""
    first = _SYSTEMD_LOG_RECORD.match(text)
    if first is None:
        return None
    banks = tuple(bank for bank in first.groups()[1:9:2] if bank is not None)
    pattern = _same_banks_record(banks)
    if pattern is None:
        return None
    events: list[UserspaceDigests] = []
    offset, fromhex = 0, bytes.fromhex
    if len(banks) == 2:  # sha1 and sha256, as most TPMs have them: no loop per digest
        one, two = banks
        for record, pcr, first_hex, second_hex in pattern.findall(text):
            events.append((offset, int(pcr), {one: fromhex(first_hex), two: fromhex(second_hex)}))
            offset += len(record)
    else:
        for record, pcr, *hexes in pattern.findall(text):
            digests = {bank: fromhex(hexes[at]) for at, bank in enumerate(banks)}
            events.append((offset, int(pcr), digests))
            offset += len(record)
    return tuple(events) if offset == len(text) else None


@overload
def _systemd_log(text: str, content: bool) -> tuple[UserspaceEvent, ...] | None: ...
@overload
def _systemd_log(
    text: str, content: bool, *, bare: Literal[True]
) -> tuple[UserspaceDigests, ...] | None: ...
def _systemd_log(text: str, content: bool, *, bare: bool = False) -> tuple[Any, ...] | None:
    """The events (or with `bare` their offset, PCR and digests) of a log whose every record
    is in systemd's own form (then each record is one match and json.loads of it the same
    object), else None."""
    events: list[Any] = []
    expected = 0
    new, sizes, fromhex = object.__new__, _DIGEST_SIZES, bytes.fromhex
    for match in _SYSTEMD_LOG_RECORD.finditer(text):
        start = match.start()
        if start != expected:
            return None
        expected = match.end()
        groups = match.groups()
        one, two = groups[1], groups[3]
        if two is None or groups[5] is not None:  # not sha1 and sha256 as systemd measures
            digests = _digests(groups[1:9])
            if digests is None:
                return None
        else:
            try:  # lowercase hex digits, by the pattern
                first, second = fromhex(groups[2]), fromhex(groups[4])
            except ValueError:  # an odd number of them
                return None
            if (
                one == two
                or len(first) != sizes.get(one, len(first))
                or len(second) != sizes.get(two, len(second))
            ):
                return None
            digests = {one: first, two: second}
        if bare:
            events.append((start, int(groups[0]), digests))
            continue
        event: UserspaceEvent = new(UserspaceEvent)  # as userspace_event_of
        event.__dict__.update(
            offset=start,
            pcr=int(groups[0]),
            digests=digests,
            content_type=groups[9],
            content=json.loads(groups[10]) if content else {},
        )
        events.append(event)
    return tuple(events) if expected == len(text) else None


def _digests(pairs: Sequence[str | None]) -> dict[str, bytes] | None:
    """The (bank, hex) pairs as userspace_event_of reads them, None where it would refuse."""
    digests: dict[str, bytes] = {}
    for at in range(0, len(pairs), 2):
        bank, hexadecimal = pairs[at], pairs[at + 1]
        if bank is None or hexadecimal is None:
            break
        try:
            value = bytes.fromhex(hexadecimal)
        except ValueError:
            return None
        if bank in digests or len(value) != _DIGEST_SIZES.get(bank, len(value)):
            return None
        digests[bank] = value
    return digests


def _systemd_record(body: str, start: int, content: bool) -> UserspaceEvent | None:
    """userspace_event_of(json.loads(body)) of a record in systemd's own form, else None."""
    match = _SYSTEMD_RECORD.match(body)
    if match is None or not body.endswith("}\n"):
        return None
    digests: dict[str, bytes] = {}
    for bank, text in _DIGESTS.findall(match[2]):
        try:
            value = bytes.fromhex(text)
        except ValueError:
            return None
        if bank in digests or len(value) != _DIGEST_SIZES.get(bank, len(value)):
            return None
        digests[bank] = value
    try:
        members, after = _JSON.raw_decode(body, match.end())
    except (ValueError, RecursionError):
        return None
    if after != len(body) - 2 or not isinstance(members, dict):
        return None
    event: UserspaceEvent = object.__new__(UserspaceEvent)  # as userspace_event_of
    event.__dict__.update(
        offset=start,
        pcr=int(match[1]),
        digests=digests,
        content_type=match[3][1:-1],
        content=members if content else {},
    )
    return event
