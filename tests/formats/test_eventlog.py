"""TCG event logs and systemd's userspace log: real logs, hand-built records, corrupt input."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import struct
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ultraviolet.formats import efivar
from ultraviolet.formats._reader import Reader
from ultraviolet.formats.eventlog import (
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EFI_VARIABLE_BOOT,
    EV_EFI_VARIABLE_DRIVER_CONFIG,
    EV_EVENT_TAG,
    EV_IPL,
    EV_NO_ACTION,
    EV_SEPARATOR,
    SPEC_ID_SIGNATURE,
    EventLog,
    EventLogError,
    ImageLoad,
    Ipl,
    NoAction,
    Separator,
    SpecId,
    StartupLocality,
    TaggedEvent,
    UefiVariable,
    _read_agile_event,
    parse_event_log,
    parse_userspace_log,
    replay,
    replay_userspace,
    startup_locality,
)
from ultraviolet.formats.eventlog_write import (
    EventLogWriteError,
    EventRecord,
    image_load_data,
    measured,
    tagged_event_data,
    userspace_record,
    utf16,
    write_event_log,
)
from ultraviolet.formats.eventlog_write import startup_locality as startup_locality_record

LOGS = Path("/work/shared/testdata/eventlogs")
BINARY_LOGS = sorted(p.name for p in LOGS.glob("*_eventlog"))
WINDOWS = LOGS / "windows_gcp_shielded_vm.json"
EFI_GLOBAL = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")

# Final PCRs printed by tpm2_eventlog (tpm2-tools 5.7) for two of the logs; the oracle tier
# compares every log and bank against the tool itself.
GOLDEN = {
    ("crypto_agile_eventlog", "sha256"): {
        0: "1536de221b2187a421602cd81f43aa04496b0bd5a424d3b25b637a942080d0fa",
        1: "f883c25efc566190a8449b54717cacb3f35fc83e4f8e19330b3e32a2b57bb03f",
        4: "b0af298ea2ca63fe39d0f9887948f8c9ccedd1cca90b6ed20f0aa1f9cbd8504e",
        5: "3f2855fc9db5201707a42708e00f9f54ebf78e250152decbf5086cab1690add8",
        7: "3d6207f9a2c3fa1db729f06e71b09d2e7ca7c0c198f6c1410c2186bbe2cc1826",
    },
    ("ebs_event_missing_eventlog", "sha1"): {
        0: "b4766c154feaacaefd61b48c661fc1c294762f4c",
        1: "387ce86429dabb3cefb5c0c87972021119537db3",
        4: "7eefb9fd15e088587a0c50e2ecfb2b301e963dc2",
        5: "e5781a2fd49c23a33b16bf0ba5f10efa1aa5d43c",
        7: "c6b89634b1d11a0083298c17acec8fd9ab266db6",
    },
}


def _read(name: str) -> bytes:
    return (LOGS / name).read_bytes()


def _windows() -> dict[str, Any]:
    return json.loads(WINDOWS.read_text())  # type: ignore[no-any-return]


# Hand-built crypto-agile logs (struct.pack, independent of the module's writer).


def _spec_id_record(algorithms: list[tuple[int, int]]) -> bytes:
    body = SPEC_ID_SIGNATURE + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(algorithms))
    body += b"".join(struct.pack("<HH", alg, size) for alg, size in algorithms) + b"\0"
    return struct.pack("<II", 0, EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(body)) + body


def _record(pcr: int, event_type: int, data: bytes, banks: tuple[str, ...] = ("sha256",)) -> bytes:
    ids = {"sha1": 4, "sha256": 11, "sha384": 12}
    digests = b"".join(
        struct.pack("<H", ids[bank]) + hashlib.new(bank, data).digest() for bank in banks
    )
    head = struct.pack("<III", pcr, event_type, len(banks)) + digests
    return head + struct.pack("<I", len(data)) + data


def _agile_log(*records: bytes, banks: tuple[str, ...] = ("sha256",)) -> bytes:
    sizes = {"sha1": (4, 20), "sha256": (11, 32), "sha384": (12, 48)}
    return _spec_id_record([sizes[bank] for bank in banks]) + b"".join(records)


def _extend(value: bytes, data: bytes, bank: str = "sha256") -> bytes:
    return hashlib.new(bank, value + hashlib.new(bank, data).digest()).digest()


# Real logs.


@pytest.mark.parametrize("name", BINARY_LOGS)
def test_real_logs_parse_and_round_trip(name: str) -> None:
    data = _read(name)
    log = parse_event_log(data)
    assert log.to_bytes() == data
    assert [event.index for event in log.events] == list(range(len(log.events)))
    # The Spec ID record itself is in the SHA-1 format; every later one carries all banks.
    for event in log.events[1 if log.spec_id else 0 :]:
        assert set(event.digests) == set(log.banks)
    for event in log.events:
        event.content()  # every typed decoder accepts the real data


@pytest.mark.parametrize("name", BINARY_LOGS)
def test_real_log_digests_cover_the_decoded_data(name: str) -> None:
    """Where the PFP says the digest is of the event data, recomputing it checks our framing
    and decoding: separators and Secure Boot variables hash their whole data, boot variables
    the whole UEFI_VARIABLE_DATA or (most firmware) just the variable's value."""
    checked = 0
    for event in parse_event_log(_read(name)).events:
        for bank, value in event.digests.items():
            whole = hashlib.new(bank, event.data).digest()
            if event.event_type in (EV_SEPARATOR, EV_EFI_VARIABLE_DRIVER_CONFIG):
                assert value == whole, (event.index, bank)
                checked += 1
            elif event.event_type == EV_EFI_VARIABLE_BOOT:
                variable = event.content()
                assert isinstance(variable, UefiVariable)
                assert value in (whole, hashlib.new(bank, variable.data).digest())
                checked += 1
    assert checked >= 8


@pytest.mark.parametrize(("name", "bank"), sorted(GOLDEN))
def test_replay_equals_tpm2_eventlog_golden_values(name: str, bank: str) -> None:
    values = replay(parse_event_log(_read(name)), bank)
    for pcr, expected in GOLDEN[(name, bank)].items():
        assert values[pcr].hex() == expected
    # PCRs that only saw the separator: extend(0, H(00000000)) as the PFP describes.
    zero = bytes(hashlib.new(bank).digest_size)
    assert values[2] == values[3] == values[6] == _extend(zero, bytes(4), bank)


def test_formats_and_spec_id() -> None:
    agile = parse_event_log(_read("coreos_36_shielded_vm_no_secure_boot_eventlog"))
    assert agile.format == "crypto-agile"
    assert agile.banks == ("sha1", "sha256", "sha384")
    assert agile.spec_id is not None and agile.spec_id.uintn_size == 2
    assert isinstance(agile.events[0].content(), SpecId)
    legacy = parse_event_log(_read("ebs_event_missing_eventlog"))
    assert (legacy.format, legacy.spec_id, legacy.banks) == ("sha1", None, ("sha1",))
    with pytest.raises(EventLogError, match="no sha256 bank"):
        replay(legacy, "sha256")


def test_decoded_events_of_a_real_log() -> None:
    log = parse_event_log(_read("crypto_agile_eventlog"))
    # What tpm2_eventlog shows for events 4 and 5 (the SecureBoot and PK variables).
    secure_boot, pk = log.events[4].content(), log.events[5].content()
    assert secure_boot == UefiVariable(EFI_GLOBAL, "SecureBoot", b"")
    assert isinstance(pk, UefiVariable) and (pk.name, len(pk.data)) == ("PK", 839)
    kinds = {type(event.content()) for event in log.events}
    assert {Separator, UefiVariable, ImageLoad, SpecId} <= kinds
    ubuntu = parse_event_log(_read("ubuntu_2104_shielded_vm_no_secure_boot_eventlog"))
    texts = [c.text for e in ubuntu.events if isinstance(c := e.content(), Ipl)]
    assert "grub_cmd: set prefix=(hd0,gpt1)/boot/grub" in texts
    images = [c for e in ubuntu.events if isinstance(c := e.content(), ImageLoad)]
    assert images[0].length == 954576 and images[0].device_path.endswith(b"\x7f\xff\x04\x00")


def test_shim_trailing_bytes_are_kept() -> None:
    # shim logs its image loads with a zero device path length but 9 bytes of path.
    log = parse_event_log(_read("sb_cert_eventlog"))
    images = [
        c
        for e in log.events
        if e.event_type == EV_EFI_BOOT_SERVICES_APPLICATION
        and isinstance(c := e.content(), ImageLoad)
    ]
    assert any(image.device_path == b"" and len(image.trailing) == 9 for image in images)


def test_windows_log_replays_to_its_quoted_pcrs() -> None:
    vector = _windows()
    log = parse_event_log(base64.b64decode(vector["Log"]["Raw"]))
    assert log.format == "sha1"
    values = replay(log, "sha1")
    reported = {p["Index"]: base64.b64decode(p["Digest"]) for p in vector["Log"]["PCRs"]}
    assert set(values) == {0, 4, 5, 7, 11, 12, 13, 14}
    for pcr, value in reported.items():
        if pcr in values:
            assert values[pcr] == value, pcr
        else:  # no events: the reset value (all ones for the DRTM PCRs 17-22)
            assert value == (b"\xff" * 20 if 17 <= pcr <= 22 else bytes(20)), pcr


# Hand-built records.


def test_startup_locality_sets_pcr0_start() -> None:
    locality = b"StartupLocality\0" + b"\x03"
    data = _agile_log(
        _record(0, EV_NO_ACTION, locality),
        _record(0, 0x8, b"crtm version"),
        _record(1, EV_SEPARATOR, bytes(4)),
    )
    log = parse_event_log(data)
    assert startup_locality(log) == 3
    assert log.events[1].content() == StartupLocality(3)
    values = replay(log, "sha256")
    assert values[0] == _extend(bytes(31) + b"\x03", b"crtm version")
    assert values[1] == _extend(bytes(32), bytes(4))
    without = parse_event_log(_agile_log(_record(0, 0x8, b"crtm version")))
    assert replay(without)[0] == _extend(bytes(32), b"crtm version") != values[0]


def test_typed_decoders_on_hand_built_events() -> None:
    owner = uuid.UUID("605dab50-e046-4300-abb6-3dd810dd8b23")
    name = "MokListRT".encode("utf-16-le")
    variable = owner.bytes_le + struct.pack("<QQ", 9, 3) + name + b"abc"
    image = struct.pack("<QQQQ", 0x1000, 0x2000, 0x400000, 4) + b"\x7f\xff\x04\x00"
    tagged = struct.pack("<II", 0xF5BC582A, 24) + "loader.conf\0".encode("utf-16-le")
    stub_ipl = ".linux\0".encode("utf-16-le")
    log = parse_event_log(
        _agile_log(
            _record(7, 0x800000E0, variable),
            _record(4, EV_EFI_BOOT_SERVICES_APPLICATION, image),
            _record(5, EV_EVENT_TAG, tagged),
            _record(11, EV_IPL, stub_ipl),
            _record(8, EV_IPL, b"grub_cmd: linux /vmlinuz\0"),
            _record(0, EV_NO_ACTION, b"SP800-155 Event\0" + b"xyz"),
            _record(0, 0x9, b"microcode"),
        )
    )
    contents = [event.content() for event in log.events[1:]]
    assert contents[0] == UefiVariable(owner, "MokListRT", b"abc")
    assert contents[1] == ImageLoad(0x1000, 0x2000, 0x400000, b"\x7f\xff\x04\x00")
    assert isinstance(contents[2], TaggedEvent)
    assert (contents[2].tag_name, contents[2].description) == ("loader.conf", "loader.conf")
    assert contents[3] == Ipl(".linux")
    assert contents[4] == Ipl("grub_cmd: linux /vmlinuz")
    assert contents[5] == NoAction(b"SP800-155 Event\0", b"xyz")
    assert contents[6] is None
    assert log.events[7].type_name == "EV_CPU_MICROCODE"


SPEC_SHA256 = _spec_id_record([(11, 32)])  # 65 bytes
SPEC_TWO = _spec_id_record([(4, 20), (11, 32)])  # 69 bytes
# The Spec ID structure starts 32 bytes into the log: signature 16, class etc. 8, count 4.
SPEC_COUNT, SPEC_SIZES = 32 + 24, 32 + 28


@pytest.mark.parametrize(
    ("data", "message", "offset"),
    [
        (b"\x01\x00\x00\x00", "truncated", 0),
        (_agile_log(_record(0, 8, b"x"))[:-1], "truncated", len(SPEC_SHA256) + 50),
        (SPEC_SHA256 + struct.pack("<IIIH", 0, 8, 1, 4), "0x0004 is not in the Spec ID", 65 + 12),
        (SPEC_SHA256 + struct.pack("<III", 0, 8, 2), "2 digests, but the log has 1", 65 + 8),
        (
            SPEC_TWO + struct.pack("<IIIH", 0, 8, 2, 11) + bytes(32) + b"\x0b\0",
            "a second sha256",
            69 + 12 + 34,
        ),
        (_spec_id_record([(11, 20)]), "0x000b with a 20-byte digest", SPEC_SIZES),
        (_spec_id_record([]), "0 algorithms", SPEC_COUNT),
        (_spec_id_record([(11, 32), (11, 32)]), "listed twice", SPEC_SIZES + 4),
        (SPEC_SHA256[:8] + b"\1" + SPEC_SHA256[9:], "non-zero digest", 8),
        (SPEC_SHA256[:-1] + b"\1" + b"v", "need 1 bytes, 0 left", 32 + 33),
        (SPEC_SHA256[:28] + b"\x22\0\0\0" + SPEC_SHA256[32:] + b"x", "1 bytes after", 32 + 33),
    ],
)
def test_malformed_logs(data: bytes, message: str, offset: int) -> None:
    with pytest.raises(EventLogError, match=message) as caught:
        parse_event_log(data)
    assert caught.value.offset == offset


def test_malformed_event_data_fails_only_when_decoded() -> None:
    bad_name = uuid.UUID(int=0).bytes_le + struct.pack("<QQ", 1, 0) + b"\x00\xd8"  # lone surrogate
    log = parse_event_log(
        _agile_log(
            _record(7, EV_EFI_VARIABLE_DRIVER_CONFIG, bad_name),
            _record(7, EV_SEPARATOR, bytes(3)),
            _record(7, EV_EFI_VARIABLE_BOOT, bytes(20)),
        )
    )
    with pytest.raises(EventLogError, match="not UTF-16") as caught:
        log.events[1].content()
    assert caught.value.offset == log.events[1].data_offset + 32
    with pytest.raises(EventLogError, match="3 bytes, not 4"):
        log.events[2].content()
    with pytest.raises(EventLogError, match="truncated"):
        log.events[3].content()
    assert len(replay(log)[7]) == 32  # replay does not depend on decoding


def test_replay_errors() -> None:
    log = parse_event_log(_agile_log(_record(0, 8, b"x", ("sha1",)), banks=("sha1",)))
    with pytest.raises(EventLogError, match="no sha256 bank"):
        replay(log, "sha256")
    with pytest.raises(EventLogError, match="cannot replay bank 'md5'"):
        replay(log, "md5")


def test_writer_round_trips_a_built_log() -> None:
    data = _agile_log(
        _record(0, 8, b"a", ("sha1", "sha256")),
        _record(4, 0x80000003, bytes(40), ("sha1", "sha256")),
        banks=("sha1", "sha256"),
    )
    log = parse_event_log(data)
    assert log.to_bytes() == data
    first_two = EventLog(log.format, log.spec_id, log.events[:2])
    assert first_two.to_bytes() == data[: log.events[2].offset]
    foreign = replace(log.events[1], digests={"sha512": bytes(64)})
    with pytest.raises(EventLogError, match="cannot write"):
        EventLog(log.format, log.spec_id, (log.events[0], foreign)).to_bytes()


# systemd's userspace log. The records are what systemd-pcrextend 257 wrote (oracle tier).

ENTER_INITRD = hashlib.sha256(b"enter-initrd").hexdigest()
USERSPACE = (
    b'\x1e{"pcr":11,"digests":[{"hashAlg":"sha1","digest":"'
    + hashlib.sha1(b"enter-initrd").hexdigest().encode()
    + b'"},{"hashAlg":"sha256","digest":"'
    + ENTER_INITRD.encode()
    + b'"}],"content_type":"systemd","content":{"string":"enter-initrd",'
    + b'"bootId":"5effe6f72ee94948a6dc0d56205d1648","timestamp":25420178982,"eventType":"phase"}}\n'
    + b'\x1e{"pcr":15,"digests":[{"hashAlg":"sha256","digest":"'
    + hashlib.sha256(b"hello world").hexdigest().encode()
    + b'"}],"content_type":"systemd","content":{"string":"hello world","eventType":"phase"}}\n'
)


def test_userspace_log() -> None:
    events = parse_userspace_log(USERSPACE)
    assert [(e.pcr, e.string, e.event_type, e.content_type) for e in events] == [
        (11, "enter-initrd", "phase", "systemd"),
        (15, "hello world", "phase", "systemd"),
    ]
    assert events[1].offset == USERSPACE.index(b"\x1e", 1)
    values = replay_userspace(events, "sha256")
    assert values[11] == _extend(bytes(32), b"enter-initrd")
    assert values[11].hex() != ENTER_INITRD
    assert values[15] == _extend(bytes(32), b"hello world")
    assert set(replay_userspace(events, "sha1")) == {11}  # PCR 15 was extended in sha256 only
    start = {11: b"\x11" * 32}
    assert replay_userspace(events, start=start)[11] == _extend(b"\x11" * 32, b"enter-initrd")
    assert parse_userspace_log(b"") == ()
    assert len(parse_userspace_log(b"\x1e\x1e" + USERSPACE[1:])) == 2  # RS RS is no record


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (b"{", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"pcr":"11","digests":[]}', "not a PCR index"),
        (b'{"pcr":true,"digests":[]}', "not a PCR index"),
        (b'{"pcr":11,"digests":[]}', "non-empty list"),
        (b'{"pcr":11,"digests":[{"hashAlg":"sha256","digest":"zz"}]}', "not hex"),
        (b'{"pcr":11,"digests":[{"hashAlg":"sha256","digest":"00"}]}', "of 1 bytes"),
        (b'{"pcr":11,"digests":[{"hashAlg":"sha256"}]}', "lacks a string"),
        (b'{"pcr":11,"digests":[1]}', "not an object"),
        (b'{"pcr":11,"digests":[{"hashAlg":"x","digest":""}],"content":[]}', '"content"'),
        (b'{"pcr":11,"digests":[{"hashAlg":"x","digest":""}],"content_type":1}', "content_type"),
        (b'{"digests":[{"hashAlg":"x","digest":"00"},{"hashAlg":"x","digest":"00"}]}', "second"),
        (b'{"a":"\xc3\x28"}', "not JSON"),
        (b"[" * 100_000, "not JSON"),
    ],
)
def test_malformed_userspace_records(record: bytes, message: str) -> None:
    good = USERSPACE
    with pytest.raises(EventLogError, match=message) as caught:
        parse_userspace_log(good + b"\x1e" + record + b"\n")
    assert caught.value.offset == len(good)


def test_userspace_framing_errors() -> None:
    with pytest.raises(EventLogError, match="does not start with 0x1E") as caught:
        parse_userspace_log(b"{}\n")
    assert caught.value.offset == 0
    with pytest.raises(EventLogError, match="no final line feed") as caught:
        parse_userspace_log(USERSPACE[:-1])
    assert caught.value.offset == USERSPACE.index(b"\x1e", 1)


# Properties: nothing but EventLogError escapes, whatever the input.


def _exercise(data: bytes) -> None:
    """Parse, decode every event and replay every bank; only EventLogError may escape."""
    try:
        log = parse_event_log(data)
    except EventLogError:
        return
    assert log.to_bytes() == data
    for event in log.events:
        with contextlib.suppress(EventLogError):
            event.content()
    for bank in log.banks:
        with contextlib.suppress(EventLogError):
            replay(log, bank)


@given(st.binary(max_size=600))
def test_random_bytes_raise_only_event_log_error(data: bytes) -> None:
    _exercise(data)


@given(st.binary(max_size=300))
def test_random_records_after_a_spec_id_raise_only_event_log_error(tail: bytes) -> None:
    _exercise(_spec_id_record([(4, 20), (11, 32)]) + tail)


SEED_LOGS = {name: _read(name) for name in ("crypto_agile_eventlog", "ebs_event_missing_eventlog")}


@settings(max_examples=300)
@given(
    st.sampled_from(sorted(SEED_LOGS)),
    st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(0, 14056),
)
def test_mutated_real_logs_raise_only_event_log_error(
    name: str, mutations: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(SEED_LOGS[name][: max(cut, 3001)])
    for offset, value in mutations:
        data[offset] = value
    _exercise(bytes(data))


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, len(USERSPACE) - 1), st.integers(0, 255)), max_size=4))
def test_mutated_userspace_logs_raise_only_event_log_error(
    mutations: list[tuple[int, int]],
) -> None:
    data = bytearray(USERSPACE)
    for offset, value in mutations:
        data[offset] = value
    with contextlib.suppress(EventLogError):
        for bank in ("sha1", "sha256"):
            replay_userspace(parse_userspace_log(bytes(data)), bank)


@given(st.binary(max_size=300))
def test_random_userspace_bytes_raise_only_event_log_error(data: bytes) -> None:
    with contextlib.suppress(EventLogError):
        parse_userspace_log(b"\x1e" + data)


# The writer (formats/eventlog_write.py) and EFI signature lists (formats/efivar.py). The
# oracle tier (tests/attest/test_appraise_oracle.py) reads written logs with tpm2_eventlog.


APPLICATION = EV_EFI_BOOT_SERVICES_APPLICATION


def _written_records() -> list[EventRecord]:
    banks = ("sha1", "sha256")
    variable = efivar.uefi_variable_data(EFI_GLOBAL, "SecureBoot", b"\x01")
    return [
        startup_locality_record(3, banks),
        measured(0, 8, utf16("firmware 1.0"), banks),
        measured(7, EV_EFI_VARIABLE_DRIVER_CONFIG, variable, banks),
        measured(
            4, EV_EFI_BOOT_SERVICES_APPLICATION, image_load_data(0x1000, 0x2000), banks, b"pe"
        ),
        measured(5, EV_EVENT_TAG, tagged_event_data(0xF5BC582A, utf16("loader.conf")), banks),
        measured(7, EV_SEPARATOR, bytes(4), banks),
    ]


def test_written_log_parses_back_and_replays() -> None:
    records = _written_records()
    data = write_event_log(records, ("sha1", "sha256"))
    log = parse_event_log(data)
    assert log.format == "crypto-agile" and log.banks == ("sha1", "sha256")
    assert log.to_bytes() == data
    assert [(e.pcr, e.event_type, dict(e.digests), e.data) for e in log.events[1:]] == [
        (r.pcr, r.event_type, dict(r.digests), r.data) for r in records
    ]
    assert startup_locality(log) == 3
    contents = [event.content() for event in log.events[2:]]
    assert contents[0] is None  # EV_S_CRTM_VERSION has no decoder
    assert contents[1] == UefiVariable(EFI_GLOBAL, "SecureBoot", b"\x01")
    assert contents[2] == ImageLoad(0x1000, 0x2000, 0, b"")
    assert isinstance(contents[3], TaggedEvent) and contents[3].description == "loader.conf"
    assert contents[4] == Separator(0)
    start = bytes(31) + b"\x03"
    assert replay(log)[0] == _extend(start, utf16("firmware 1.0"))
    assert replay(log)[4] == _extend(bytes(32), b"pe")
    assert replay(log, "sha1")[5] == _extend(bytes(20), records[4].data, "sha1")


def test_writer_refuses_what_the_format_cannot_hold() -> None:
    with pytest.raises(EventLogWriteError, match="no sha1 digest"):
        write_event_log([measured(0, 8, b"x", ("sha256",))], ("sha1", "sha256"))
    with pytest.raises(EventLogWriteError, match="not distinct"):
        write_event_log([], ("sha256", "sha256"))
    with pytest.raises(EventLogWriteError, match="out of range"):
        write_event_log([measured(-1, 8, b"x", ("sha256",))])


def test_userspace_record_is_what_systemd_pcrextend_writes() -> None:
    record = userspace_record(11, "enter-initrd", ("sha1", "sha256"))
    (event,) = parse_userspace_log(record)
    assert (event.pcr, event.string, event.event_type, event.content_type) == (
        11,
        "enter-initrd",
        "phase",
        "systemd",
    )
    assert event.digests["sha256"].hex() == ENTER_INITRD
    assert record.startswith(b"\x1e") and record.endswith(b"}\n")


AGILE_LOGS = [name for name in BINARY_LOGS if parse_event_log(_read(name)).spec_id]


@pytest.mark.parametrize("name", AGILE_LOGS)
def test_fast_path_reads_every_record_like_the_checked_reader(name: str) -> None:
    log = parse_event_log(_read(name))
    assert log.spec_id is not None
    reader = Reader(_read(name), "TCG event log", EventLogError)
    sizes = dict(log.spec_id.algorithms)
    for event in log.events[1:]:
        reader.seek(event.offset)
        assert _read_agile_event(reader, event.index, sizes) == event


def test_signature_lists_round_trip_and_fingerprints() -> None:
    owner = uuid.UUID("7d4a2f7e-0b4c-4d57-9a47-6c7f9e0e1a55")
    first, second = b"\x30\x82" + b"A" * 40, b"\x30\x82" + b"B" * 60
    data = efivar.x509_signature_list([first, second], owner)
    lists = efivar.parse_signature_lists(data)
    assert [entry.signature_type for entry in lists] == [efivar.EFI_CERT_X509] * 2
    assert [s.owner for entry in lists for s in entry.signatures] == [owner, owner]
    assert b"".join(entry.to_bytes() for entry in lists) == data
    assert efivar.certificate_fingerprints(lists) == (
        hashlib.sha256(first).digest(),
        hashlib.sha256(second).digest(),
    )
    hashes = efivar.SignatureList(
        efivar.EFI_CERT_SHA256,
        b"",
        (efivar.SignatureData(owner, b"\x11" * 32), efivar.SignatureData(owner, b"\x22" * 32)),
    )
    (parsed,) = efivar.parse_signature_lists(hashes.to_bytes())
    assert parsed == hashes and not parsed.is_x509
    assert efivar.certificate_fingerprints([parsed]) == ()
    assert efivar.parse_signature_lists(b"") == ()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (bytes(16) + struct.pack("<III", 28, 0, 8), "signatures of 8"),
        (bytes(16) + struct.pack("<III", 20, 0, 16), "list of 20 bytes"),
        (bytes(16) + struct.pack("<III", 28 + 20, 0, 16), "not a multiple of 16"),
        (bytes(16) + struct.pack("<III", 28 + 32, 0, 32), "truncated"),
    ],
)
def test_malformed_signature_lists(data: bytes, message: str) -> None:
    with pytest.raises(efivar.EfiVariableError, match=message):
        efivar.parse_signature_lists(data)


@given(st.binary(max_size=200))
def test_random_signature_lists_raise_only_efi_variable_error(data: bytes) -> None:
    with contextlib.suppress(efivar.EfiVariableError):
        efivar.parse_signature_lists(data)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_signature_lists_raise_only_efi_variable_error(
    mutations: list[tuple[int, int]],
) -> None:
    data = bytearray(efivar.x509_signature_list([b"A" * 50, b"B" * 70], uuid.UUID(int=7)))
    for offset, value in mutations:
        data[offset % len(data)] = value
    with contextlib.suppress(efivar.EfiVariableError):
        efivar.parse_signature_lists(bytes(data))
