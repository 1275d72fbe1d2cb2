"""The verifier's fast paths (formats/eventlog_fast.py, efivar.x509_fingerprints) answer what the
checked readers answer, or None (then the caller takes the checked path): on real logs, on
generated logs and on mutations of both."""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ultraviolet.formats import efivar
from ultraviolet.formats.eventlog import (
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EFI_VARIABLE_AUTHORITY,
    EV_EFI_VARIABLE_DRIVER_CONFIG,
    EV_NO_ACTION,
    EV_SEPARATOR,
    Event,
    EventLogError,
    UefiVariable,
    parse_event_log,
    parse_userspace_log,
    replay,
)
from ultraviolet.formats.eventlog_fast import (
    _same_banks_log,
    _systemd_log,
    pcr_digests,
    read_userspace_digests,
    read_userspace_log,
    scan_firmware_log,
    variable_name_and_value,
)
from ultraviolet.formats.eventlog_write import (
    EventRecord,
    measured,
    no_action,
    userspace_record,
    write_event_log,
)
from ultraviolet.formats.eventlog_write import startup_locality as startup_locality_record

LOGS = Path("/work/shared/testdata/eventlogs")
REAL_LOGS = {p.name: p.read_bytes() for p in sorted(LOGS.glob("*_eventlog"))}
KEEP = (4, 7)
GUID = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")


def _assert_scan_is_checked(data: bytes, bank: str) -> bool:
    """The scan equals parse_event_log + replay wherever it answers; True if it answered."""
    scan = scan_firmware_log(data, bank, KEEP)
    if scan is None:
        return False
    log = parse_event_log(data)  # must not raise where the scan answered
    assert log.spec_id == scan.spec_id
    assert scan.digests.replay() == replay(log, bank)
    assert scan.digests == pcr_digests(log, bank)
    some = set(list(scan.digests.digests)[::2])
    assert scan.digests.replay(some) == {p: v for p, v in replay(log, bank).items() if p in some}
    measured_events = [e for e in log.events if e.event_type != EV_NO_ACTION]
    for pcr in KEEP:
        checked = [e for e in measured_events if e.pcr == pcr]
        assert scan.events(pcr) == checked
        # What the verifier reads without making the Event: type, digest in the bank, data.
        assert [k[:5] for k in scan.kept.get(pcr, [])] == [
            (e.offset, e.pcr, e.event_type, e.digests[bank], e.data) for e in checked
        ]
    assert set(scan.kept) <= set(KEEP)
    return True


@pytest.mark.parametrize("name", sorted(REAL_LOGS))
def test_scan_of_real_logs_equals_parse_and_replay(name: str) -> None:
    data = REAL_LOGS[name]
    log = parse_event_log(data)
    answered = [_assert_scan_is_checked(data, bank) for bank in log.banks]
    if log.format == "crypto-agile":  # the fast path must not give up on real firmware logs
        assert all(answered), name


_TYPES = st.sampled_from(
    [EV_NO_ACTION, EV_SEPARATOR, EV_EFI_BOOT_SERVICES_APPLICATION, EV_EFI_VARIABLE_DRIVER_CONFIG, 8]
)
_RECORDS = st.lists(
    st.tuples(st.sampled_from([0, 1, 4, 7, 11, 23]), _TYPES, st.binary(max_size=40)),
    max_size=12,
)
_BANKS = st.sampled_from([("sha256",), ("sha1", "sha256"), ("sha256", "sha384"), ("sha1",)])


def _log(
    records: list[tuple[int, int, bytes]], banks: tuple[str, ...], locality: int | None
) -> bytes:
    built: list[EventRecord] = []
    if locality is not None:
        built.append(startup_locality_record(locality, banks))
    for pcr, event_type, data in records:
        if event_type == EV_NO_ACTION:
            built.append(no_action(data, banks, pcr))
        else:
            built.append(measured(pcr, event_type, data, banks))
    return write_event_log(built, banks)


@settings(max_examples=300)
@given(_RECORDS, _BANKS, st.one_of(st.none(), st.integers(0, 4)))
def test_scan_of_generated_logs_equals_parse_and_replay(
    records: list[tuple[int, int, bytes]], banks: tuple[str, ...], locality: int | None
) -> None:
    data = _log(records, banks, locality)
    for bank in ("sha1", "sha256", "sha384"):
        # A well-formed written log is never left to the checked path, but for a StartupLocality
        # record of another size than 17 bytes (which replay refuses).
        odd = any(
            pcr == 0
            and kind == EV_NO_ACTION
            and d.startswith(b"StartupLocality\0")
            and len(d) != 17
            for pcr, kind, d in records
        )
        assert _assert_scan_is_checked(data, bank) == (bank in banks and not odd)
        if odd:
            with pytest.raises(EventLogError):
                replay(parse_event_log(data), banks[0])


@settings(max_examples=400)
@given(
    _RECORDS,
    _BANKS,
    st.one_of(st.none(), st.integers(0, 4)),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 10_000),
)
def test_scan_of_mutated_logs_equals_parse_and_replay_or_gives_up(
    records: list[tuple[int, int, bytes]],
    banks: tuple[str, ...],
    locality: int | None,
    mutations: list[tuple[int, int]],
    cut: int,
) -> None:
    data = bytearray(_log(records, banks, locality))
    for offset, value in mutations:
        data[offset % len(data)] = value
    mutated = bytes(data[: max(cut, 40)])
    for bank in ("sha1", "sha256"):
        with contextlib.suppress(EventLogError):  # replay may refuse where the scan gave up
            _assert_scan_is_checked(mutated, bank)


def _checked_variable(data: bytes) -> tuple[str, bytes] | None:
    event = Event(1, 0, 0, 7, EV_EFI_VARIABLE_DRIVER_CONFIG, {}, data)
    try:
        content = event.content()
    except EventLogError:
        return None
    assert isinstance(content, UefiVariable)
    return content.name, content.data


@settings(max_examples=300)
@given(st.text(max_size=12), st.binary(max_size=40), st.binary(max_size=8), st.integers(0, 80))
def test_variable_name_and_value_equals_event_content(
    name: str, value: bytes, trailing: bytes, cut: int
) -> None:
    data = efivar.uefi_variable_data(GUID, name, value) + trailing
    for candidate in (data, data[:cut]):
        with contextlib.suppress(UnicodeEncodeError):
            assert variable_name_and_value(candidate) == _checked_variable(candidate)


@given(st.binary(max_size=120))
def test_variable_name_and_value_of_random_bytes(data: bytes) -> None:
    assert variable_name_and_value(data) == _checked_variable(data)


def _checked_fingerprints(data: bytes) -> tuple[bytes, ...] | None:
    try:
        lists = efivar.parse_signature_lists(data)
    except efivar.EfiVariableError:
        return None
    if not all(signature_list.is_x509 for signature_list in lists):
        return None
    return efivar.certificate_fingerprints(lists)


@settings(max_examples=300)
@given(
    st.lists(st.binary(min_size=1, max_size=60), max_size=3),
    st.booleans(),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=3),
)
def test_x509_fingerprints_equal_the_checked_parser(
    certificates: list[bytes], with_hashes: bool, mutations: list[tuple[int, int]]
) -> None:
    data = efivar.x509_signature_list(certificates, GUID)
    if with_hashes:
        hashes = efivar.SignatureList(
            efivar.EFI_CERT_SHA256, b"", (efivar.SignatureData(GUID, bytes(32)),)
        )
        data += hashes.to_bytes()
    mutable = bytearray(data)
    for offset, value in mutations:
        if mutable:
            mutable[offset % len(mutable)] = value
    for candidate in (data, bytes(mutable)):
        assert efivar.x509_fingerprints(candidate) == _checked_fingerprints(candidate)
    if not with_hashes:
        expected = tuple(hashlib.sha256(der).digest() for der in certificates)
        assert efivar.x509_fingerprints(data) == expected


# The userspace log.


def _assert_userspace_is_checked(data: bytes) -> bool:
    fast = read_userspace_log(data)
    digests = read_userspace_digests(data)
    assert (digests is None) == (fast is None)
    if fast is None:
        return False
    assert digests == tuple((e.offset, e.pcr, e.digests) for e in fast)
    assert fast == parse_userspace_log(data)  # must not raise where the fast path answered
    bare = read_userspace_log(data, content=False)
    assert bare is not None
    assert [(e.offset, e.pcr, e.digests, e.content_type) for e in bare] == [
        (e.offset, e.pcr, e.digests, e.content_type) for e in fast
    ]
    assert all(e.content == {} for e in bare)
    return True


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 30) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.integers(0, 23), st.text(max_size=20)), max_size=8),
    st.lists(_JSON_VALUES, max_size=2),
    st.sampled_from(["", "\n", " \n", "\x1e\n"]),
)
def test_userspace_fast_path_equals_the_checked_reader(
    strings: list[tuple[int, str]], others: list[object], gap: str
) -> None:
    records = [userspace_record(pcr, text, ("sha1", "sha256")) for pcr, text in strings]
    records += [b"\x1e" + json.dumps(value).encode() + b"\n" for value in others]
    data = gap.encode().join(records)
    answered = _assert_userspace_is_checked(data)
    if data and data.isascii() and not others and not gap.startswith(" "):
        assert answered  # systemd's own records are never left to the checked path
    plain = all(
        text.isascii() and text.isprintable() and not {'"', "\\"} & set(text) for _, text in strings
    )
    if data.isascii() and not others and not gap and plain:  # no escapes: one match a record
        bare = _systemd_log(data.decode("ascii"), False, bare=True)
        assert bare is not None
        if strings:  # the same banks in every record: one findall reads them all
            assert _same_banks_log(data.decode("ascii")) == bare


@settings(max_examples=400)
@given(
    st.lists(st.tuples(st.integers(0, 23), st.text(max_size=10)), min_size=1, max_size=4),
    st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_userspace_fast_path_on_mutated_logs(
    strings: list[tuple[int, str]], mutations: list[tuple[int, int]]
) -> None:
    data = bytearray(b"".join(userspace_record(p, t, ("sha256",)) for p, t in strings))
    for offset, value in mutations:
        data[offset % len(data)] = value
    with contextlib.suppress(EventLogError):  # the checked reader may refuse what fast gave up
        _assert_userspace_is_checked(bytes(data))


_DIGEST_ITEMS = st.lists(
    st.tuples(
        st.sampled_from(["sha1", "sha256", "sha384", "sha512", "sm3_256", "md5", ""]),
        st.binary(max_size=66),
        st.sampled_from(["", "0", "A", " "]),  # odd, uppercase, spaced: not plain hex
    ),
    min_size=1,
    max_size=5,
)
_SHORT_TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=6)


def _systemd_form(
    pcr: int, items: list[tuple[str, bytes, str]], content_type: str, content: object
) -> bytes:
    digests = ",".join(
        f'{{"hashAlg":{json.dumps(bank)},"digest":"{value.hex() + odd}"}}'
        for bank, value, odd in items
    )
    kind = json.dumps(content_type)
    members = json.dumps(content, separators=(",", ":"))
    record = f'{{"pcr":{pcr},"digests":[{digests}],"content_type":{kind},"content":{members}}}'
    return b"\x1e" + record.encode() + b"\n"


@settings(max_examples=400)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.integers(0, 30), st.integers(0, 2**40)),
            _DIGEST_ITEMS,
            _SHORT_TEXT,
            st.one_of(st.dictionaries(_SHORT_TEXT, _SHORT_TEXT, max_size=3), _JSON_VALUES),
        ),
        max_size=5,
    )
)
def test_userspace_records_in_systemd_form_equal_the_checked_reader(
    records: list[tuple[int, list[tuple[str, bytes, str]], str, object]],
) -> None:
    """Records in the compact form systemd writes, with every digest list, bank, hex and
    content variation the one-regex reading must take apart as json.loads does."""
    data = b"".join(_systemd_form(*record) for record in records)
    try:
        checked = parse_userspace_log(data)
    except EventLogError:
        assert read_userspace_log(data) is None
        assert read_userspace_digests(data) is None
        return
    if _assert_userspace_is_checked(data):
        return
    assert checked == () or not data.isascii()  # an ASCII log the checked reader reads


def test_same_banks_reading_gives_up_on_records_with_other_banks_or_text_between() -> None:
    both, sha256 = ("sha1", "sha256"), ("sha256",)
    log = userspace_record(11, "a", both) + userspace_record(15, "b", both)
    assert _same_banks_log(log.decode()) == read_userspace_digests(log)
    for other in (
        userspace_record(11, "a", both) + userspace_record(15, "b", sha256),
        userspace_record(11, "a", both) + b" " + userspace_record(15, "b", both),
        userspace_record(11, "a", both)[:-1] + userspace_record(15, "b", both),
    ):
        assert _same_banks_log(other.decode()) is None
    mixed = userspace_record(11, "a", both) + userspace_record(15, "b", sha256)
    assert read_userspace_digests(mixed) == tuple(
        (e.offset, e.pcr, e.digests) for e in parse_userspace_log(mixed)
    )


def test_fast_paths_give_up_on_what_only_the_checked_reader_explains() -> None:
    written = write_event_log([measured(4, 8, b"x", ("sha256",))], ("sha256",))
    assert scan_firmware_log(written[:-1], "sha256", KEEP) is None  # truncated
    assert scan_firmware_log(written, "sha1", KEEP) is None  # no such bank
    odd_locality = write_event_log([no_action(b"StartupLocality\0\x03\x00", ("sha256",))])
    assert scan_firmware_log(odd_locality, "sha256", KEEP) is None
    with pytest.raises(EventLogError):
        replay(parse_event_log(odd_locality))
    assert read_userspace_log(b'\x1e{"pcr":1,"digests":[]}') is None  # no final line feed
    assert read_userspace_log('\x1e{"pcr":1,"s":"é"}\n'.encode()) is None  # not ASCII
    assert variable_name_and_value(bytes(31)) is None
    authority = Event(1, 0, 0, 7, EV_EFI_VARIABLE_AUTHORITY, {}, bytes(32))
    assert isinstance(authority.content(), UefiVariable)
    assert variable_name_and_value(authority.data) == ("", b"")


def test_scan_applies_a_startup_locality_that_follows_pcr0_measurements() -> None:
    """replay starts PCR 0 from the StartupLocality wherever the record stands in the log; the
    scan extends PCR 0 only once it has read the whole log."""
    banks = ("sha1", "sha256")
    late = write_event_log(
        [
            measured(0, EV_SEPARATOR, b"\0\0\0\0", banks),
            startup_locality_record(3, banks),
            measured(0, 8, b"x", banks),
            measured(4, 8, b"y", banks),
        ],
        banks,
    )
    assert _assert_scan_is_checked(late, "sha256")
    scan = scan_firmware_log(late, "sha256", KEEP)
    assert scan is not None
    expected = bytes(31) + b"\x03"
    for data in (b"\0\0\0\0", b"x"):
        expected = hashlib.sha256(expected + hashlib.sha256(data).digest()).digest()
    assert scan.digests.replay()[0] == expected
