"""Evidence JSON: round trip, strict decoding with the key named, and (hypothesis) malformed
documents only ever raise EvidenceError."""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ultraviolet.formats.evidence import Evidence, EvidenceError, IpeEvent, parse_evidence

SAMPLE = Evidence(
    quote=b"\xffTCG\x80\x18quote",
    signature=b"\x00\x14\x00\x0bsig",
    pcrs={"sha256": {0: b"\x00" * 32, 11: b"\x11" * 32}, "sha1": {7: b"\x07" * 20}},
    firmware_log=b"log",
    userspace_log=b"",
    ipe_events=(IpeEvent("audit(1700000000.123:42)", 'ipe_op=EXECUTE rule="DEFAULT action=DENY"'),),
)


def _document() -> dict[str, Any]:
    return json.loads(SAMPLE.to_bytes())  # type: ignore[no-any-return]


def test_round_trip() -> None:
    assert parse_evidence(SAMPLE.to_bytes()) == SAMPLE
    empty = Evidence(b"q", b"s", {}, b"", b"", ())
    assert parse_evidence(empty.to_bytes()) == empty


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("quote"), "missing key 'quote'"),
        (lambda d: d.update(extra=1), r"unknown key\(s\) extra"),
        (lambda d: d.update(format=2), "evidence.format: expected 1"),
        (lambda d: d.update(format=True), "evidence.format: expected int, got bool"),
        (lambda d: d.update(quote="not base64!"), "evidence.quote: not base64"),
        (lambda d: d.update(signature=3), "evidence.signature: expected str, got int"),
        (lambda d: d["pcrs"].update(md5={}), "evidence.pcrs.md5: expected a known bank"),
        (lambda d: d["pcrs"]["sha256"].update({"24": "00" * 32}), "expected a PCR index 0-23"),
        (lambda d: d["pcrs"]["sha256"].update({"07": "00" * 32}), "expected a PCR index 0-23"),
        (lambda d: d["pcrs"]["sha256"].update({"²": "00" * 32}), "expected a PCR index 0-23"),
        (lambda d: d["pcrs"]["sha256"].update({"1": "00" * 20}), "sha256.1: expected 64 lowercase"),
        (lambda d: d["pcrs"]["sha1"].update({"7": "AB" * 20}), "sha1.7: expected 40 lowercase"),
        (lambda d: d["pcrs"]["sha1"].update({"7": 7}), "sha1.7: expected 40 lowercase"),
        (lambda d: d.update(ipe_events={}), "ipe_events: expected list"),
        (lambda d: d["ipe_events"].append("x"), r"ipe_events\[1\]: expected an object"),
        (lambda d: d["ipe_events"][0].pop("record"), r"ipe_events\[0\]: missing key 'record'"),
        (lambda d: d["ipe_events"][0].update(pid=1), r"ipe_events\[0\]: unknown key"),
    ],
)
def test_malformed_documents_name_the_key(mutate: Any, message: str) -> None:
    document = _document()
    mutate(document)
    with pytest.raises(EvidenceError, match=message):
        parse_evidence(json.dumps(document).encode())


def test_not_json_duplicate_keys_and_deep_nesting() -> None:
    with pytest.raises(EvidenceError, match="not JSON"):
        parse_evidence(b"{")
    with pytest.raises(EvidenceError, match="expected a JSON object"):
        parse_evidence(b"[]")
    with pytest.raises(EvidenceError, match="'quote' appears twice"):
        parse_evidence(b'{"quote": "", "quote": ""}')
    with pytest.raises(EvidenceError, match="not JSON"):
        parse_evidence(b"[" * 100_000)
    with pytest.raises(EvidenceError, match="not JSON"):
        parse_evidence(b"\xff\xfe")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_evidence_error(data: bytes) -> None:
    with contextlib.suppress(EvidenceError):
        parse_evidence(data)


@given(_json)
def test_random_json_raises_only_evidence_error(value: object) -> None:
    with contextlib.suppress(EvidenceError):
        parse_evidence(json.dumps(value).encode())


_KEYS = ["format", "quote", "signature", "pcrs", "firmware_log", "userspace_log", "ipe_events"]


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(st.sampled_from(_KEYS), _json | st.dictionaries(st.text(max_size=3), _json)),
        max_size=3,
    )
)
def test_documents_with_replaced_members_raise_only_evidence_error(
    replacements: list[tuple[str, object]],
) -> None:
    document = _document()
    for key, value in replacements:
        document[key] = value
    with contextlib.suppress(EvidenceError):
        assert parse_evidence(json.dumps(document).encode()) is not None


@settings(max_examples=300)
@given(st.integers(0, len(SAMPLE.to_bytes()) - 1), st.integers(0, 255))
def test_mutated_documents_raise_only_evidence_error(position: int, byte: int) -> None:
    data = bytearray(SAMPLE.to_bytes())
    data[position] = byte
    with contextlib.suppress(EvidenceError):
        parse_evidence(bytes(data))


# What a PCR member may be, as the format says it (regular expressions), against the decoder.
CANONICAL_INDEX = re.compile(r"0|[1-9][0-9]?")
LOWER_HEX = re.compile(r"(?:[0-9a-f]{2})+")


@settings(max_examples=400)
@given(
    st.one_of(st.text(max_size=3), st.integers(-2, 30).map(str), st.just("07")),
    st.one_of(
        st.binary(min_size=32, max_size=32).map(bytes.hex),
        st.text(alphabet="0123456789abcdefABCDEF \n", min_size=62, max_size=66),
        st.text(max_size=64),
    ),
)
def test_pcr_members_are_accepted_exactly_as_the_format_says(index: str, value: str) -> None:
    document = _document()
    document["pcrs"] = {"sha256": {index: value}}
    valid = (
        CANONICAL_INDEX.fullmatch(index) is not None
        and int(index) <= 23
        and len(value) == 64
        and LOWER_HEX.fullmatch(value) is not None
    )
    try:
        evidence = parse_evidence(json.dumps(document).encode())
    except EvidenceError:
        assert not valid
        return
    assert valid
    assert evidence.pcrs == {"sha256": {int(index): bytes.fromhex(value)}}
