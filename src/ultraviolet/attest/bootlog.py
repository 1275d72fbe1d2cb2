"""What the verifier reads from a node's logs, independent of any reference: parsed once per log.

A node sends the same firmware log with every evidence until it reboots, so the parse, the
replay and the facts PCR 4 and 7 are judged on are kept by the log's bytes (a bounded cache);
the judgement against the accepted releases (attest/appraise.py) is lookups in those facts.
Facts are read from every event, trusted or not; the appraisal uses a PCR's facts only when the
log replays to the quoted value of that PCR.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from ultraviolet.errors import FormatError
from ultraviolet.formats import efivar
from ultraviolet.formats.eventlog import (
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EFI_VARIABLE_AUTHORITY,
    EV_NO_ACTION,
    Event,
    EventLog,
    UefiVariable,
    UserspaceEvent,
    parse_event_log,
    parse_userspace_log,
    replay,
    replay_userspace,
)

BANK = "sha256"
KEY_DATABASES = ("PK", "KEK", "db")
CACHED_LOGS = 1024  # about 50 KB each


@dataclass(frozen=True)
class KeyDatabase:
    """PK, KEK or db as measured: its certificates' fingerprints, or what is wrong with it."""

    fingerprints: tuple[bytes, ...] = ()
    problem: str | None = None


@dataclass(frozen=True)
class Pcr4Facts:
    applications: tuple[bytes, ...]  # Authenticode digests, in the order started
    disguised: Event | None  # the first other event whose digest is not the hash of its data


@dataclass(frozen=True)
class Pcr7Facts:
    uncovered: Event | None  # the first event whose digest is not the hash of its data
    secure_boot: bytes | None
    databases: Mapping[str, KeyDatabase | None]  # None: not measured
    authorities: tuple[bytes, ...]  # fingerprints of the db entries that verified images


@dataclass(frozen=True)
class FirmwareLog:
    log: EventLog
    by_pcr: Mapping[int, tuple[Event, ...]]  # measured events (no EV_NO_ACTION)
    pcr4: Pcr4Facts
    pcr7: Pcr7Facts
    replayed: Mapping[int, bytes] | str  # in BANK, or why the log cannot be replayed

    def events(self, pcr: int) -> tuple[Event, ...]:
        return self.by_pcr.get(pcr, ())

    def replay(self, bank: str) -> Mapping[int, bytes] | str:
        """The PCR values the log replays to in `bank`, or why it cannot be replayed."""
        if bank == BANK:
            return self.replayed
        try:
            return replay(self.log, bank)
        except FormatError as exc:
            return str(exc)


def _covers_data(event: Event) -> bool:
    digest = event.digests.get(BANK)
    return digest is not None and hmac.compare_digest(digest, hashlib.sha256(event.data).digest())


@functools.lru_cache(maxsize=CACHED_LOGS)
def read_firmware_log(data: bytes) -> FirmwareLog:
    """The parsed log and its facts (EventLogError if it does not parse)."""
    log = parse_event_log(data)
    by_pcr: dict[int, list[Event]] = {}
    for event in log.events:
        if event.event_type != EV_NO_ACTION:
            by_pcr.setdefault(event.pcr, []).append(event)
    events = {pcr: tuple(listed) for pcr, listed in by_pcr.items()}
    replayed: Mapping[int, bytes] | str
    try:
        replayed = replay(log, BANK)
    except FormatError as exc:
        replayed = str(exc)
    return FirmwareLog(log, events, _pcr4(events.get(4, ())), _pcr7(events.get(7, ())), replayed)


@functools.lru_cache(maxsize=CACHED_LOGS)
def read_userspace_log(data: bytes) -> tuple[UserspaceEvent, ...]:
    return parse_userspace_log(data)


@dataclass(frozen=True)
class Replayed:
    """PCR values after both logs, or why either log cannot be replayed in the bank."""

    values: Mapping[int, bytes]
    userspace_pcrs: frozenset[int]  # PCRs the userspace log extended
    firmware_error: str | None = None
    userspace_error: str | None = None


@functools.lru_cache(maxsize=CACHED_LOGS)
def replay_logs(firmware_log: bytes, userspace_log: bytes, bank: str) -> Replayed:
    """Both logs replayed in `bank` (FormatError if either log does not parse)."""
    firmware = read_firmware_log(firmware_log).replay(bank)
    if isinstance(firmware, str):
        return Replayed({}, frozenset(), firmware_error=firmware)
    userspace = read_userspace_log(userspace_log)
    extended = frozenset(e.pcr for e in userspace if bank in e.digests and e.pcr is not None)
    try:
        return Replayed(replay_userspace(userspace, bank, firmware), extended)
    except FormatError as exc:
        return Replayed({}, extended, userspace_error=str(exc))


def clear_caches() -> None:
    """Forget every log read so far (benchmarks measure the first evidence of a boot)."""
    read_firmware_log.cache_clear()
    read_userspace_log.cache_clear()
    replay_logs.cache_clear()


def _pcr4(events: tuple[Event, ...]) -> Pcr4Facts:
    applications = tuple(
        e.digests.get(BANK, b"") for e in events if e.event_type == EV_EFI_BOOT_SERVICES_APPLICATION
    )
    others = (e for e in events if e.event_type != EV_EFI_BOOT_SERVICES_APPLICATION)
    return Pcr4Facts(applications, next((e for e in others if not _covers_data(e)), None))


def _pcr7(events: tuple[Event, ...]) -> Pcr7Facts:
    uncovered = next((e for e in events if not _covers_data(e)), None)
    variables: dict[str, bytes] = {}
    authorities: list[bytes] = []
    for event in events:
        content = _variable(event)
        if content is None:
            continue
        if event.event_type == EV_EFI_VARIABLE_AUTHORITY:
            authorities.append(hashlib.sha256(content.data[16:]).digest())  # owner GUID, cert
        else:
            variables.setdefault(content.name, content.data)
    databases = {name: _key_database(name, variables.get(name)) for name in KEY_DATABASES}
    secure_boot = variables.get("SecureBoot")
    return Pcr7Facts(uncovered, secure_boot, databases, tuple(authorities))


def _variable(event: Event) -> UefiVariable | None:
    try:
        content = event.content()
    except FormatError:
        return None
    return content if isinstance(content, UefiVariable) else None


def _key_database(name: str, value: bytes | None) -> KeyDatabase | None:
    if value is None:
        return None
    try:
        lists = efivar.parse_signature_lists(value)
    except FormatError as exc:
        return KeyDatabase(problem=f"{name} is not a signature list: {exc.detail}")
    if any(not entry.is_x509 for entry in lists):
        problem = f"{name} holds entries other than X.509 certificates (hashes allow other images)"
        return KeyDatabase(problem=problem)
    return KeyDatabase(efivar.certificate_fingerprints(lists))
