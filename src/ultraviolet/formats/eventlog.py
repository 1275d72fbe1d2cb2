"""TCG PC Client event logs (firmware) and systemd's userspace measurement log.

Firmware log (TCG PC Client Platform Firmware Profile, little-endian): a crypto-agile log starts
with one SHA-1-format TCG_PCClientPCREvent {pcr u32, type u32, digest[20], size u32, data} of
type EV_NO_ACTION whose data is the "Spec ID Event03" structure listing the algorithms and
their digest sizes; every later record is a TCG_PCR_EVENT2 {pcr u32, type u32, TPML_DIGEST_VALUES
{count u32, (alg u16, digest)*}, size u32, data}. A log without that first record is the legacy
SHA-1-only format (TCG_PCClientPCREvent throughout).

Replay extends every event's digest except EV_NO_ACTION's, from zeros; a StartupLocality
EV_NO_ACTION record sets the last byte of PCR 0's starting value to the locality. The event
type and data are not covered by the digest: trust only what you decode and re-hash yourself.

systemd's /run/log/systemd/tpm2-measure.log is a JSON-SEQ (RFC 7464) file: each record is
0x1E, a CEL-JSON-like object {"pcr", "digests": [{"hashAlg", "digest"}], "content_type",
"content"}, and a line feed.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from ultraviolet.formats import pcr as pcr_math
from ultraviolet.formats._reader import Bytes, Reader
from ultraviolet.formats.eventlog_names import EVENT_TYPES, SYSTEMD_EVENT_TAGS, EventLogError
from ultraviolet.formats.eventlog_userspace import (
    RECORD_SEPARATOR,
    UserspaceEvent,
    _check_bank,
    parse_userspace_log,
    replay_userspace,
    userspace_event_of,
)
from ultraviolet.formats.tpm import HASH_ALGORITHMS, hash_name

EV_PREBOOT_CERT = 0x00
EV_POST_CODE = 0x01
EV_NO_ACTION = 0x03
EV_SEPARATOR = 0x04
EV_ACTION = 0x05
EV_EVENT_TAG = 0x06
EV_S_CRTM_CONTENTS = 0x07
EV_S_CRTM_VERSION = 0x08
EV_IPL = 0x0D
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_VARIABLE_BOOT = 0x80000002
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
EV_EFI_BOOT_SERVICES_DRIVER = 0x80000004
EV_EFI_RUNTIME_SERVICES_DRIVER = 0x80000005
EV_EFI_ACTION = 0x80000007
EV_EFI_VARIABLE_BOOT2 = 0x8000000C
EV_EFI_VARIABLE_AUTHORITY = 0x800000E0

SPEC_ID_SIGNATURE = b"Spec ID Event03\0"
STARTUP_LOCALITY_SIGNATURE = b"StartupLocality\0"
SHA1_SIZE = 20
MAX_ALGORITHMS = 16  # a log lists each bank once; TPMs have a handful of banks
MAX_DIGEST_SIZE = 512  # bounds hostile Spec ID sizes; real digests are at most 64 bytes


def event_type_name(event_type: int) -> str:
    return EVENT_TYPES.get(event_type, f"0x{event_type:08x}")


@dataclass(frozen=True)
class SpecId:
    """TCG_EfiSpecIDEvent ("Spec ID Event03"): the banks every later record carries."""

    platform_class: int
    spec_version_minor: int
    spec_version_major: int
    spec_errata: int
    uintn_size: int
    algorithms: tuple[tuple[int, int], ...]  # (TPM_ALG_ID, digest size), in log order
    vendor_info: bytes

    @property
    def banks(self) -> tuple[str, ...]:
        return tuple(hash_name(alg) for alg, _ in self.algorithms)


@dataclass(frozen=True)
class StartupLocality:
    """The locality the TPM was started from; PCR 0 starts as 0...0 || locality."""

    locality: int


@dataclass(frozen=True)
class NoAction:
    """Another EV_NO_ACTION structure, by its 16-byte signature (e.g. "SP800-155 Event")."""

    signature: bytes
    data: bytes


@dataclass(frozen=True)
class Separator:
    value: int  # 0 normally; firmware signals an error with another value


@dataclass(frozen=True)
class UefiVariable:
    """UEFI_VARIABLE_DATA: what EV_EFI_VARIABLE_* events record."""

    vendor_guid: uuid.UUID
    name: str
    data: bytes
    trailing: bytes = b""  # after the declared data (shim's authority events carry 6 bytes)


@dataclass(frozen=True)
class ImageLoad:
    """UEFI_IMAGE_LOAD_EVENT of an EFI application or driver (device path kept raw)."""

    location: int
    length: int
    link_time_address: int
    device_path: bytes
    trailing: bytes = b""  # after the declared device path (shim writes some, with length 0)


@dataclass(frozen=True)
class Ipl:
    """EV_IPL: grub writes ASCII with a NUL, systemd-stub/-boot UTF-16 descriptions."""

    text: str


@dataclass(frozen=True)
class TaggedEvent:
    """TCG_PCClientTaggedEvent {taggedEventID, size, data}; systemd's carry a UTF-16
    description (Windows uses the same record for its binary SIPA data)."""

    tag: int
    data: bytes

    @property
    def tag_name(self) -> str | None:
        return SYSTEMD_EVENT_TAGS.get(self.tag)

    @property
    def description(self) -> str | None:
        return _utf16_text(self.data) if self.tag in SYSTEMD_EVENT_TAGS else None


EventContent = (
    SpecId | StartupLocality | NoAction | Separator | UefiVariable | ImageLoad | Ipl | TaggedEvent
)


@dataclass(frozen=True)
class Event:
    index: int  # position in the log, 0 = the first record
    offset: int  # byte offset of the record in the log
    data_offset: int  # byte offset of `data` in the log
    pcr: int
    event_type: int
    digests: Mapping[str, bytes]  # bank name ("sha256") -> digest, in record order
    data: bytes

    @property
    def type_name(self) -> str:
        return event_type_name(self.event_type)

    def content(self) -> EventContent | None:
        """The event data decoded by type, None for types without a decoder.
        Malformed data raises EventLogError (the log itself stays readable)."""
        decoder = _DECODERS.get(self.event_type)
        return decoder(self) if decoder else None


@dataclass(frozen=True)
class EventLog:
    format: Literal["crypto-agile", "sha1"]
    spec_id: SpecId | None
    events: tuple[Event, ...]

    @property
    def banks(self) -> tuple[str, ...]:
        return self.spec_id.banks if self.spec_id else ("sha1",)

    def to_bytes(self) -> bytes:
        """The log exactly as it was read (or as built from these dataclasses)."""
        try:
            return b"".join(
                _legacy_record(event)
                if self.spec_id is None or event.index == 0
                else _agile_record(event, self.spec_id)
                for event in self.events
            )
        except (KeyError, OverflowError) as exc:  # a bank or a number the format cannot hold
            raise EventLogError("TCG event log", f"cannot write this event: {exc!r}") from exc


def _legacy_record(event: Event) -> bytes:
    head = event.pcr.to_bytes(4, "little") + event.event_type.to_bytes(4, "little")
    return head + event.digests["sha1"] + len(event.data).to_bytes(4, "little") + event.data


def _agile_record(event: Event, spec_id: SpecId) -> bytes:
    ids = {hash_name(alg): alg for alg, _ in spec_id.algorithms}
    parts = [
        event.pcr.to_bytes(4, "little"),
        event.event_type.to_bytes(4, "little"),
        len(event.digests).to_bytes(4, "little"),
    ]
    for bank, value in event.digests.items():
        parts += [ids[bank].to_bytes(2, "little"), value]
    parts += [len(event.data).to_bytes(4, "little"), event.data]
    return b"".join(parts)


# Parsing the firmware log.


def _read_legacy_event(r: Reader, index: int) -> Event:
    offset = r.pos
    pcr, event_type = r.unpack("<II")
    sha1 = r.read(SHA1_SIZE)
    size = r.u32()
    data_offset = r.pos
    return Event(index, offset, data_offset, pcr, event_type, {"sha1": sha1}, r.read(size))


@dataclass(frozen=True)
class _RecordLayout:
    """TCG_PCR_EVENT2 up to the data size when it carries every bank of the Spec ID in order,
    as firmware writes it: one struct.unpack_from instead of a read per field."""

    head: struct.Struct
    algorithms: tuple[int, ...]
    digest_fields: tuple[tuple[str, int], ...]  # (bank, index of its digest in the fields)

    @classmethod
    def of(cls, spec_id: SpecId) -> _RecordLayout:
        fields = "".join(f"H{size}s" for _, size in spec_id.algorithms)
        algorithms = tuple(alg for alg, _ in spec_id.algorithms)
        digests = tuple((bank, 4 + 2 * number) for number, bank in enumerate(spec_id.banks))
        return cls(struct.Struct(f"<III{fields}I"), algorithms, digests)


def _read_agile_events_fast(r: Reader, layout: _RecordLayout, events: list[Event]) -> None:
    """Read records of the common layout up to the first other one (which the checked reader
    then reads, or reports)."""
    data, offset, end = r.data, r.pos, len(r.data)
    unpack, head_size, algorithms = layout.head.unpack_from, layout.head.size, layout.algorithms
    while offset < end:
        data_offset = offset + head_size
        if data_offset > end:
            break
        fields = unpack(data, offset)
        stop = data_offset + fields[-1]
        if fields[2] != len(algorithms) or fields[3:-1:2] != algorithms or stop > end:
            break
        # A frozen dataclass's __init__ sets each field through object.__setattr__: most of
        # the cost of reading a log, which the verifier does per evidence. Fill the fields'
        # dict directly (Event has no __post_init__ or slots to bypass).
        digests = {}
        for bank, field in layout.digest_fields:
            digests[bank] = fields[field]
        event: Event = object.__new__(Event)
        event.__dict__.update(
            index=len(events),
            offset=offset,
            data_offset=data_offset,
            pcr=fields[0],
            event_type=fields[1],
            digests=digests,
            data=bytes(data[data_offset:stop]),
        )
        events.append(event)
        offset = stop
    r.pos = offset


def _read_agile_event(r: Reader, index: int, sizes: Mapping[int, int]) -> Event:
    offset = r.pos
    pcr, event_type, count = r.unpack("<III")
    if count > len(sizes):
        r.fail(f"{count} digests, but the log has {len(sizes)} algorithms", r.pos - 4)
    digests: dict[str, bytes] = {}
    for _ in range(count):
        alg = r.u16()
        if alg not in sizes:
            r.fail(f"digest algorithm 0x{alg:04x} is not in the Spec ID event", r.pos - 2)
        bank = hash_name(alg)
        if bank in digests:
            r.fail(f"a second {bank} digest", r.pos - 2)
        digests[bank] = r.read(sizes[alg])
    size = r.u32()
    data_offset = r.pos
    return Event(index, offset, data_offset, pcr, event_type, digests, r.read(size))


def _read_spec_id(data: bytes, base: int) -> SpecId:
    r = Reader(data, "Spec ID event", EventLogError, base=base)
    if r.read(16) != SPEC_ID_SIGNATURE:
        r.fail("signature is not 'Spec ID Event03'", 0)
    platform_class = r.u32()
    minor, major, errata, uintn_size = r.unpack("<BBBB")
    count = r.u32()
    if not 1 <= count <= MAX_ALGORITHMS:
        r.fail(f"{count} algorithms (1 to {MAX_ALGORITHMS})", r.pos - 4)
    algorithms: list[tuple[int, int]] = []
    for _ in range(count):
        alg, size = r.unpack("<HH")
        known = HASH_ALGORITHMS.get(alg)
        if (known and known[1] != size) or not 0 < size <= MAX_DIGEST_SIZE:
            r.fail(f"algorithm 0x{alg:04x} with a {size}-byte digest", r.pos - 4)
        if any(alg == seen for seen, _ in algorithms):
            r.fail(f"algorithm 0x{alg:04x} listed twice", r.pos - 4)
        algorithms.append((alg, size))
    vendor_info = r.read(r.u8())
    if r.remaining:
        r.fail(f"{r.remaining} bytes after the vendor info")
    return SpecId(platform_class, minor, major, errata, uintn_size, tuple(algorithms), vendor_info)


def _is_spec_id_event(event: Event) -> bool:
    return (
        event.pcr == 0
        and event.event_type == EV_NO_ACTION
        and event.data.startswith(SPEC_ID_SIGNATURE)
    )


def parse_event_log(data: Bytes) -> EventLog:
    """A firmware event log (/sys/kernel/security/tpm0/binary_bios_measurements)."""
    r = Reader(data, "TCG event log", EventLogError)
    if not r.remaining:
        r.fail("empty log")
    first = _read_legacy_event(r, 0)
    if not _is_spec_id_event(first):
        events = [first]
        while r.remaining:
            events.append(_read_legacy_event(r, len(events)))
        return EventLog("sha1", None, tuple(events))
    if first.digests["sha1"] != bytes(SHA1_SIZE):
        r.fail("the Spec ID event has a non-zero digest", first.offset + 8)
    spec_id = _read_spec_id(first.data, first.data_offset)
    sizes = dict(spec_id.algorithms)
    layout = _RecordLayout.of(spec_id)
    events = [first]
    while r.remaining:
        _read_agile_events_fast(r, layout, events)
        if r.remaining:
            events.append(_read_agile_event(r, len(events), sizes))
    return EventLog("crypto-agile", spec_id, tuple(events))


# Decoding event data.


def _utf16_text(data: bytes) -> str:
    """Descriptive UTF-16LE text up to the first NUL; undecodable units become U+FFFD."""
    text = data[: len(data) - len(data) % 2].decode("utf-16-le", errors="replace")
    return text.split("\0", 1)[0]


def _data_reader(event: Event, what: str) -> Reader:
    # Offsets in errors point into the log, not into the event data.
    return Reader(event.data, what, EventLogError, base=event.data_offset)


def _decode_no_action(event: Event) -> SpecId | StartupLocality | NoAction:
    if event.data.startswith(SPEC_ID_SIGNATURE):
        return _read_spec_id(event.data, event.data_offset)
    r = _data_reader(event, "EV_NO_ACTION data")
    signature = r.read(16)
    if signature == STARTUP_LOCALITY_SIGNATURE:
        locality = r.u8()
        if r.remaining:
            r.fail(f"{r.remaining} bytes after the StartupLocality")
        return StartupLocality(locality)
    return NoAction(signature, r.read(r.remaining))


def _decode_separator(event: Event) -> Separator:
    r = _data_reader(event, "EV_SEPARATOR data")
    if len(event.data) != 4:
        r.fail(f"{len(event.data)} bytes, not 4", 0)
    return Separator(r.u32())


def _decode_variable(event: Event) -> UefiVariable:
    r = _data_reader(event, "UEFI_VARIABLE_DATA")
    guid = uuid.UUID(bytes_le=r.read(16))
    name_units, data_size = r.unpack("<QQ")
    raw_name = r.read(2 * name_units)
    try:
        name = raw_name.decode("utf-16-le")
    except UnicodeDecodeError as exc:
        r.fail(f"variable name is not UTF-16: {exc.reason}", 32 + exc.start)
    value = r.read(data_size)
    return UefiVariable(guid, name, value, r.read(r.remaining))


def _decode_image_load(event: Event) -> ImageLoad:
    r = _data_reader(event, "UEFI_IMAGE_LOAD_EVENT")
    location, length, link_time_address, path_size = r.unpack("<QQQQ")
    path = r.read(path_size)
    return ImageLoad(location, length, link_time_address, path, r.read(r.remaining))


def _decode_ipl(event: Event) -> Ipl:
    data = event.data
    # UTF-16LE ASCII-range text has a NUL in every second byte; grub's strings have none.
    if len(data) >= 2 and len(data) % 2 == 0 and data[1::2].count(0) * 2 >= len(data) // 2:
        return Ipl(_utf16_text(data))
    return Ipl(data.split(b"\0", 1)[0].decode("utf-8", errors="replace"))


def _decode_tagged(event: Event) -> TaggedEvent:
    r = _data_reader(event, "TCG_PCClientTaggedEvent")
    tag, size = r.unpack("<II")
    body = r.read(size)
    if r.remaining:
        r.fail(f"{r.remaining} bytes after the tagged data")
    return TaggedEvent(tag, body)


_DECODERS: dict[int, Callable[[Event], EventContent]] = {
    EV_NO_ACTION: _decode_no_action,
    EV_SEPARATOR: _decode_separator,
    EV_EFI_VARIABLE_DRIVER_CONFIG: _decode_variable,
    EV_EFI_VARIABLE_BOOT: _decode_variable,
    EV_EFI_VARIABLE_BOOT2: _decode_variable,
    EV_EFI_VARIABLE_AUTHORITY: _decode_variable,
    EV_EFI_BOOT_SERVICES_APPLICATION: _decode_image_load,
    EV_EFI_BOOT_SERVICES_DRIVER: _decode_image_load,
    EV_EFI_RUNTIME_SERVICES_DRIVER: _decode_image_load,
    EV_IPL: _decode_ipl,
    EV_EVENT_TAG: _decode_tagged,
}


# Replay.


def startup_locality(log: EventLog) -> int | None:
    """The locality of the log's StartupLocality record in PCR 0, if there is one."""
    for event in log.events:
        if event.event_type == EV_NO_ACTION and event.pcr == 0:
            if not event.data.startswith(STARTUP_LOCALITY_SIGNATURE):
                continue
            content = event.content()
            if isinstance(content, StartupLocality):
                return content.locality
    return None


def replay(log: EventLog, bank: str = "sha256") -> dict[int, bytes]:
    """The PCR values the log's events produce in `bank`, for every PCR that has an event."""
    _check_bank(bank, "event log replay")
    if bank not in log.banks:
        raise EventLogError("event log replay", f"the log has no {bank} bank: {log.banks}")
    locality = startup_locality(log)
    values: dict[int, bytes] = {}
    hasher, zero = getattr(hashlib, bank), pcr_math.zero_pcr(bank)
    for event in log.events:
        if event.event_type == EV_NO_ACTION:
            continue
        value = event.digests.get(bank)
        if value is None:
            raise EventLogError("event log replay", f"no {bank} digest", event.offset)
        current = values.get(event.pcr)
        if current is None:
            locality_byte = bytes([locality]) if event.pcr == 0 and locality is not None else b""
            current = zero[: len(zero) - len(locality_byte)] + locality_byte
        if len(value) != len(zero):
            pcr_math.extend(current, value, bank)  # raises, naming both sizes
        values[event.pcr] = hasher(current + value).digest()
    return values


__all__ = [  # names defined elsewhere, importable from here as before
    "RECORD_SEPARATOR",
    "EventLogError",
    "UserspaceEvent",
    "parse_userspace_log",
    "replay_userspace",
    "userspace_event_of",
]
