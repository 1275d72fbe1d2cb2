"""What the verifier reads from a node's logs, independent of any reference: parsed once per log.

A node sends the same firmware log with every evidence until it reboots, so the replay and the
facts PCR 4 and 7 are judged on are kept by the log's SHA-256 (a bounded LRU of a few KB per
log, never the log or its parsed events); the judgement against the accepted releases
(attest/appraise.py) is lookups in those facts.
Facts are read from every event, trusted or not; the appraisal uses a PCR's facts only when the
log replays to the quoted value of that PCR.

A miss (the first evidence after each boot: a fleet's reboot storm) reads the log in one pass
(formats/eventlog_fast.py: digests per PCR for replay, whole events only of PCR 4 and 7) and
falls back to the checked reader for anything unusual, which then says what is wrong. The
facts of a PK, KEK, db or db entry value in PCR 7 are kept per distinct value (every node of a
fleet measures the same ones); each event is still hashed against its digest.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, NamedTuple, TypeVar

from ultraviolet.errors import FormatError
from ultraviolet.formats import efivar
from ultraviolet.formats import pcr as pcr_math
from ultraviolet.formats.eventlog import (
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EFI_VARIABLE_AUTHORITY,
    EV_EFI_VARIABLE_BOOT,
    EV_EFI_VARIABLE_BOOT2,
    EV_EFI_VARIABLE_DRIVER_CONFIG,
    EV_NO_ACTION,
    Event,
    UserspaceEvent,
    parse_event_log,
    parse_userspace_log,
    replay_userspace,
)
from ultraviolet.formats.eventlog_fast import (
    PcrDigests,
    UserspaceDigests,
    pcr_digests,
    read_userspace_digests,
    scan_firmware_log,
    variable_name_and_value,
)

BANK = "sha256"
DRTM_PCRS = range(17, 23)  # start as all ones until a dynamic launch resets them
ALL_PCRS = range(24)
KEY_DATABASES = ("PK", "KEK", "db")
CACHED_LOGS = 4096  # per cache; a log's facts take about 3 KB, its replay about 1 KB
_VARIABLE_EVENTS = frozenset(
    {
        EV_EFI_VARIABLE_DRIVER_CONFIG,
        EV_EFI_VARIABLE_BOOT,
        EV_EFI_VARIABLE_BOOT2,
        EV_EFI_VARIABLE_AUTHORITY,
    }
)  # the types Event.content() decodes as UefiVariable
_V = TypeVar("_V")


class _Lru(Generic[_V]):
    """A thread-safe LRU (service workers share it); a value may be made twice in a race."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[Hashable, _V] = OrderedDict()
        self.lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable, make: Callable[..., _V], *arguments: Any) -> _V:
        """The value kept for `key` (now the most recently used), else make(*arguments) kept
        (the arguments rather than a closure: a miss per first evidence, on the hot path)."""
        with self.lock:
            value = self.items.get(key)
            if value is not None:
                self.items.move_to_end(key)
                self.hits += 1
                return value
            self.misses += 1
        value = make(*arguments)
        with self.lock:
            self.items[key] = value
            if len(self.items) > self.size:
                self.items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


@dataclass(frozen=True)
class KeyDatabase:
    """PK, KEK or db as measured: its certificates' fingerprints, or what is wrong with it."""

    fingerprints: tuple[bytes, ...] = ()
    problem: str | None = None


# The facts below are made per log read and per replay, on the verifier's hot path: immutable
# named tuples, about half the cost of a frozen dataclass to make.


class Pcr4Facts(NamedTuple):
    applications: tuple[bytes, ...]  # Authenticode digests, in the order started
    disguised: Event | None  # the first other event whose digest is not the hash of its data


class Pcr7Facts(NamedTuple):
    uncovered: Event | None  # the first event whose digest is not the hash of its data
    secure_boot: bytes | None
    databases: Mapping[str, KeyDatabase | None]  # None: not measured
    authorities: tuple[bytes, ...]  # fingerprints of the db entries that verified images


class FirmwareLog(NamedTuple):
    """What the appraisal needs of a firmware log; not the events themselves."""

    sha256: bytes  # of the log: the cache key
    pcr4: Pcr4Facts
    pcr7: Pcr7Facts
    digests: PcrDigests | str  # what replay reads in BANK, or why the log cannot be replayed


class UserspaceLog(NamedTuple):
    sha256: bytes
    events: tuple[UserspaceDigests, ...]  # (offset, PCR, digests): all that replay reads


_NO_VALUES: Mapping[int, bytes] = MappingProxyType({})


class Replayed(NamedTuple):
    """PCR values after both logs, or why either log cannot be replayed in the bank."""

    values: Mapping[int, bytes]
    userspace_pcrs: frozenset[int]  # PCRs the userspace log extended
    firmware_error: str | None = None
    userspace_error: str | None = None
    every_pcr: Mapping[int, bytes] = _NO_VALUES  # values, else initial value

    @classmethod
    def of(cls, bank: str, values: Mapping[int, bytes], userspace_pcrs: frozenset[int]) -> Replayed:
        every_pcr = dict(_initial_values(bank))
        every_pcr.update(values)
        return cls(values, userspace_pcrs, every_pcr=every_pcr)


@functools.lru_cache(maxsize=8)
def _initial_values(bank: str) -> dict[int, bytes]:
    """Every PCR's value at reset (not to be changed: shared)."""
    zero = pcr_math.zero_pcr(bank)
    return {pcr: b"\xff" * len(zero) if pcr in DRTM_PCRS else zero for pcr in ALL_PCRS}


_firmware_logs: _Lru[FirmwareLog] = _Lru(CACHED_LOGS)
_userspace_logs: _Lru[UserspaceLog] = _Lru(CACHED_LOGS)
_replays: _Lru[Replayed] = _Lru(CACHED_LOGS)


# A measured event of PCR 4 or 7 as the facts are read from it: (offset, pcr, event type, its
# BANK digest or None, data, a handle the _ToEvent given with it turns into the Event to report).
_Measured = tuple[int, int, int, bytes | None, bytes, Any]
_ToEvent = Callable[[Any], Event]  # takes the _Measured it was given


def _covers_data(digest: bytes | None, data: bytes) -> bool:
    # (Not a secret compared: a log and its digests are public, as are the PCRs.)
    if digest is None:
        return False
    if len(data) <= _SMALL_DATA:
        return digest == _small_data_sha256(data)
    return digest == hashlib.sha256(data).digest()


_SMALL_DATA = 64


@functools.lru_cache(maxsize=256)
def _small_data_sha256(data: bytes) -> bytes:
    """SHA-256 of a short event data: separators, EFI actions and the SecureBoot variable are
    the same few bytes in every node's log, and looking them up costs a third of hashing."""
    return hashlib.sha256(data).digest()


def read_firmware_log(data: bytes) -> FirmwareLog:
    """The log's facts (EventLogError if it does not parse)."""
    key = hashlib.sha256(data).digest()
    return _firmware_logs.get(key, _firmware_facts, key, data)


def _firmware_facts(key: bytes, data: bytes) -> FirmwareLog:
    scan = scan_firmware_log(data, BANK, (4, 7))
    if scan is not None:  # the common well-formed log, read in one pass
        kept, to_event = scan.kept, scan.event
        pcr4, pcr7 = _pcr4(kept.get(4, ()), to_event), _pcr7(kept.get(7, ()), to_event)
        return FirmwareLog(key, pcr4, pcr7, scan.digests)
    return _checked_firmware_facts(key, data)


def _checked_firmware_facts(key: bytes, data: bytes) -> FirmwareLog:
    log = parse_event_log(data)
    by_pcr: dict[int, list[_Measured]] = {}
    for e in log.events:
        if e.event_type != EV_NO_ACTION:
            measured = (e.offset, e.pcr, e.event_type, e.digests.get(BANK), e.data, e)
            by_pcr.setdefault(e.pcr, []).append(measured)
    digests: PcrDigests | str
    try:
        digests = pcr_digests(log, BANK)
    except FormatError as exc:
        digests = str(exc)
    pcr4 = _pcr4(by_pcr.get(4, ()), _the_event)
    pcr7 = _pcr7(by_pcr.get(7, ()), _the_event)
    return FirmwareLog(key, pcr4, pcr7, digests)


def _the_event(measured: _Measured) -> Event:
    event: Event = measured[5]
    return event


def read_userspace_log(data: bytes) -> UserspaceLog:
    key = hashlib.sha256(data).digest()
    return _userspace_logs.get(key, _userspace_facts, key, data)


def _userspace_facts(key: bytes, data: bytes) -> UserspaceLog:
    return UserspaceLog(key, _userspace_events(data))


def _userspace_events(data: bytes) -> tuple[UserspaceDigests, ...]:
    events = read_userspace_digests(data)
    if events is not None:
        return events
    return tuple((e.offset, e.pcr, e.digests) for e in parse_userspace_log(data))


def replay_logs(
    firmware: FirmwareLog,
    userspace: UserspaceLog,
    bank: str,
    firmware_data: bytes,
    pcrs: Collection[int],
) -> Replayed:
    """Both logs replayed in `bank`, the values of `pcrs` (the quoted ones: no other is
    compared, so no other is hashed); `firmware_data` is the log `firmware` was read from
    (parsed again only for a bank other than BANK)."""
    wanted = frozenset(pcrs)
    key = (firmware.sha256, userspace.sha256, bank, wanted)
    return _replays.get(key, _replay_both, firmware, userspace, bank, firmware_data, wanted)


def _replay_both(
    firmware: FirmwareLog,
    userspace: UserspaceLog,
    bank: str,
    firmware_data: bytes,
    wanted: frozenset[int],
) -> Replayed:
    digests: PcrDigests | str = firmware.digests
    if bank != BANK:
        try:
            digests = pcr_digests(parse_event_log(firmware_data), bank)
        except FormatError as exc:
            digests = str(exc)
    if isinstance(digests, str):
        return Replayed({}, frozenset(), firmware_error=digests)
    events = userspace.events
    extended: set[int] = set()  # the PCRs the userspace log extends in `bank`
    try:
        replayed = _replay_userspace(events, bank, digests.replay(wanted), extended, wanted)
    except FormatError as exc:
        return Replayed({}, frozenset(extended), userspace_error=str(exc))
    return Replayed.of(bank, replayed, frozenset(extended))


def _replay_userspace(
    events: Sequence[UserspaceDigests],
    bank: str,
    start: Mapping[int, bytes],
    extended: set[int],
    wanted: frozenset[int],
) -> dict[int, bytes]:
    """replay_userspace(events, bank, start) of the events' digests, the values of the
    `wanted` PCRs (every digest is still checked); adds to `extended` the PCRs extended."""
    if bank not in pcr_math.BANKS:
        return replay_userspace(_as_events(events), bank, start)  # which says what is wrong
    hasher, zero = getattr(hashlib, bank), _initial_values(bank)[0]
    size, values = len(zero), dict(start)
    for _, pcr, digests in events:
        value = digests.get(bank)
        if pcr is None or value is None:
            continue
        extended.add(pcr)
        if len(value) != size:
            extended.update(e[1] for e in events if e[1] is not None and bank in e[2])
            return replay_userspace(_as_events(events), bank, start)  # which says where
        if pcr in wanted:
            values[pcr] = hasher(values.get(pcr, zero) + value).digest()
    return values


def _as_events(events: Sequence[UserspaceDigests]) -> list[UserspaceEvent]:
    return [UserspaceEvent(offset, pcr, digests, None, {}) for offset, pcr, digests in events]


def firmware_event_counts(data: bytes) -> dict[int, int]:
    """PCR -> measured events (EV_NO_ACTION excluded) of a log read_firmware_log read: for
    reports only, so counted when a report needs them rather than on every read."""
    counts: dict[int, int] = {}
    for event in parse_event_log(data).events:
        if event.event_type != EV_NO_ACTION:
            counts[event.pcr] = counts.get(event.pcr, 0) + 1
    return counts


def clear_caches(*, shared_values: bool = False) -> None:
    """Forget every log read so far (benchmarks measure the first evidence of a boot), and
    with `shared_values` the facts of the PCR 7 values every node measures alike too."""
    for cache in (_firmware_logs, _userspace_logs, _replays):
        cache.clear()
    if shared_values:
        _variables.clear()


def cache_statistics() -> dict[str, tuple[int, int]]:
    """(hits, misses) of each cache."""
    return {
        "firmware": (_firmware_logs.hits, _firmware_logs.misses),
        "userspace": (_userspace_logs.hits, _userspace_logs.misses),
        "replay": (_replays.hits, _replays.misses),
    }


def _pcr4(events: Sequence[_Measured], to_event: _ToEvent) -> Pcr4Facts:
    applications = []
    disguised = None
    for measured in events:
        if measured[2] == EV_EFI_BOOT_SERVICES_APPLICATION:
            applications.append(measured[3] or b"")
        elif disguised is None and not _covers_data(measured[3], measured[4]):
            disguised = to_event(measured)
    return Pcr4Facts(tuple(applications), disguised)


def _pcr7(events: Sequence[_Measured], to_event: _ToEvent) -> Pcr7Facts:
    uncovered = None
    variables: dict[str, bytes] = {}
    databases: dict[str, KeyDatabase | None] = dict.fromkeys(KEY_DATABASES)
    authorities: list[bytes] = []
    for measured in events:
        event_type, digest, data = measured[2], measured[3], measured[4]
        covered = _covers_data(digest, data)
        if uncovered is None and not covered:
            uncovered = to_event(measured)
        if event_type not in _VARIABLE_EVENTS:
            continue
        authority = event_type == EV_EFI_VARIABLE_AUTHORITY
        if covered:
            assert digest is not None
            variable = _known_variable(authority, digest, data)
        else:
            variable = _variable_facts(authority, data)
        if variable is None:  # malformed data
            continue
        name, value, derived = variable
        if isinstance(derived, bytes):
            authorities.append(derived)
        elif name not in variables:
            variables[name] = value
            if name in databases:
                databases[name] = derived
    return Pcr7Facts(uncovered, variables.get("SecureBoot"), databases, tuple(authorities))


_VariableFacts = tuple[str, bytes, KeyDatabase | bytes | None]
_variables: dict[tuple[bool, bytes], _VariableFacts | None] = {}
CACHED_VARIABLES = 1024


def _known_variable(authority: bool, sha256: bytes, data: bytes) -> _VariableFacts | None:
    """_variable_facts(authority, data), given the data's SHA-256. A fleet measures the same
    PK, KEK, db and db entries into every node's PCR 7: each is read once per distinct value
    (as the Spec ID record), kept by the digest its event carries, just checked against it."""
    key = (authority, sha256)
    if key in _variables:
        return _variables[key]
    facts = _variable_facts(authority, data)
    if len(_variables) >= CACHED_VARIABLES:  # a flood of distinct values: start afresh
        _variables.clear()
    _variables[key] = facts
    return facts


def _variable_facts(authority: bool, data: bytes) -> _VariableFacts | None:
    """(name, value, what is judged of it) of a UEFI variable event's data, None where it is
    malformed: an authority's certificate fingerprint, PK/KEK/db's certificates."""
    variable = variable_name_and_value(data)
    if variable is None:
        return None
    name, value = variable
    if authority:
        return name, value, hashlib.sha256(value[16:]).digest()  # owner GUID, certificate
    return name, value, _key_database(name, value) if name in KEY_DATABASES else None


def _key_database(name: str, value: bytes | None) -> KeyDatabase | None:
    if value is None:
        return None
    fingerprints = efivar.x509_fingerprints(value)
    if fingerprints is not None:
        return KeyDatabase(fingerprints)
    try:
        lists = efivar.parse_signature_lists(value)
    except FormatError as exc:
        return KeyDatabase(problem=f"{name} is not a signature list: {exc.detail}")
    if any(not entry.is_x509 for entry in lists):
        problem = f"{name} holds entries other than X.509 certificates (hashes allow other images)"
        return KeyDatabase(problem=problem)
    return KeyDatabase(efivar.certificate_fingerprints(lists))
