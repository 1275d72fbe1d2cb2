"""Writing TCG crypto-agile event logs and systemd's userspace log (formats/eventlog.py reads).

A log is written from EventRecords: each carries its digests per bank, by default the hash of
its data (what firmware does for variables, separators, actions and systemd's descriptions);
image loads carry the image's Authenticode digest instead. The first record is the SHA-1-format
Spec ID event naming the banks; every later one a TCG_PCR_EVENT2.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ultraviolet.errors import FormatError
from ultraviolet.formats.eventlog import (
    EV_NO_ACTION,
    RECORD_SEPARATOR,
    SHA1_SIZE,
    SPEC_ID_SIGNATURE,
    STARTUP_LOCALITY_SIGNATURE,
)
from ultraviolet.formats.tpm import HASH_ALGORITHMS, hash_id

PLATFORM_CLASS_CLIENT = 0
UINTN_SIZE_64 = 2  # Spec ID uintnSize: 2 means 64-bit UINTN


class EventLogWriteError(FormatError):
    pass


@dataclass(frozen=True)
class EventRecord:
    pcr: int
    event_type: int
    data: bytes
    digests: Mapping[str, bytes]  # bank -> digest extended into the PCR


def measured(
    pcr: int, event_type: int, data: bytes, banks: Sequence[str], digest_of: bytes | None = None
) -> EventRecord:
    """A record whose digest in every bank is H(digest_of), by default H(data)."""
    content = data if digest_of is None else digest_of
    return EventRecord(
        pcr, event_type, data, {bank: hashlib.new(bank, content).digest() for bank in banks}
    )


def no_action(data: bytes, banks: Sequence[str], pcr: int = 0) -> EventRecord:
    """EV_NO_ACTION records carry zero digests: replay skips them."""
    return EventRecord(pcr, EV_NO_ACTION, data, {bank: bytes(_size(bank)) for bank in banks})


def startup_locality(locality: int, banks: Sequence[str]) -> EventRecord:
    return no_action(STARTUP_LOCALITY_SIGNATURE + bytes([locality]), banks)


def utf16(text: str) -> bytes:
    """NUL-terminated UTF-16LE, how EDK2 and systemd write descriptions."""
    return (text + "\0").encode("utf-16-le")


def image_load_data(location: int, length: int, device_path: bytes = b"") -> bytes:
    """UEFI_IMAGE_LOAD_EVENT (link-time address 0, as for PE images loaded by the firmware)."""
    return struct.pack("<QQQQ", location, length, 0, len(device_path)) + device_path


def tagged_event_data(tag: int, data: bytes) -> bytes:
    return struct.pack("<II", tag, len(data)) + data


def _size(bank: str) -> int:
    return HASH_ALGORITHMS[hash_id(bank)][1]


def _spec_id(banks: Sequence[str]) -> bytes:
    body = SPEC_ID_SIGNATURE + struct.pack(
        "<IBBBBI", PLATFORM_CLASS_CLIENT, 0, 2, 0, UINTN_SIZE_64, len(banks)
    )
    body += b"".join(struct.pack("<HH", hash_id(bank), _size(bank)) for bank in banks)
    body += b"\0"  # no vendor info
    head = struct.pack("<II", 0, EV_NO_ACTION) + bytes(SHA1_SIZE)
    return head + struct.pack("<I", len(body)) + body


def _event2(record: EventRecord, banks: Sequence[str]) -> bytes:
    parts = [struct.pack("<III", record.pcr, record.event_type, len(banks))]
    for bank in banks:
        digest = record.digests.get(bank)
        if digest is None or len(digest) != _size(bank):
            raise EventLogWriteError(
                "TCG_PCR_EVENT2", f"no {bank} digest for a PCR {record.pcr} event"
            )
        parts += [struct.pack("<H", hash_id(bank)), digest]
    parts += [struct.pack("<I", len(record.data)), record.data]
    return b"".join(parts)


def write_event_log(records: Iterable[EventRecord], banks: Sequence[str] = ("sha256",)) -> bytes:
    """A crypto-agile log: the Spec ID event for `banks`, then the records."""
    if not banks or len(set(banks)) != len(banks):
        raise EventLogWriteError("Spec ID event", f"banks {list(banks)} are not distinct")
    try:
        return _spec_id(banks) + b"".join(_event2(record, banks) for record in records)
    except struct.error as exc:
        raise EventLogWriteError("TCG_PCR_EVENT2", f"a value out of range: {exc}") from exc


# systemd's userspace log.


def userspace_record(
    pcr: int, string: str, banks: Sequence[str], event_type: str = "phase"
) -> bytes:
    """One JSON-SEQ record as systemd-pcrextend writes it for a string measurement."""
    record = {
        "pcr": pcr,
        "digests": [
            {"hashAlg": bank, "digest": hashlib.new(bank, string.encode()).hexdigest()}
            for bank in banks
        ],
        "content_type": "systemd",
        "content": {"string": string, "eventType": event_type},
    }
    return bytes([RECORD_SEPARATOR]) + json.dumps(record, separators=(",", ":")).encode() + b"\n"
