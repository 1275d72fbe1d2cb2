"""Attestation evidence: what a node agent sends the verifier for one challenge.

It travels as JSON with base64 binary fields. Decoding is strict: unknown or missing keys, wrong
types and bad base64 are EvidenceErrors naming the key, so that a node cannot get a check skipped
by leaving a field out. The binary members are parsed later by formats.tpm and formats.eventlog.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ultraviolet.errors import FormatError

EVIDENCE_FORMAT = 1
DIGEST_SIZES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}
# Canonical indices only: "07" and "7" may not both name PCR 7.
_PCR_INDICES = {str(index): index for index in range(24)}
_LOWER_HEX = "0123456789abcdef"


class EvidenceError(FormatError):
    """Evidence that is not well-formed (before any trust decision is made)."""

    def __init__(self, message: str) -> None:
        super().__init__("evidence", message)


@dataclass(frozen=True)
class IpeEvent:
    """One IPE audit record as the node read it (AUDIT_IPE_ACCESS, type 1420)."""

    timestamp: str  # audit(SECONDS.MILLIS:SERIAL) stamp as written by the kernel
    record: (
        str  # the record's text, e.g. 'ipe_op=EXECUTE ipe_hook=BPRM_CHECK ... rule="DEFAULT ..."'
    )


@dataclass(frozen=True)
class Evidence:
    """One node's answer to one challenge."""

    quote: bytes  # TPMS_ATTEST as signed by the TPM (tpm2_quote --message)
    signature: bytes  # TPMT_SIGNATURE (tpm2_quote --signature)
    pcrs: Mapping[str, Mapping[int, bytes]]  # bank -> PCR index -> value, as quoted
    firmware_log: bytes  # /sys/kernel/security/tpm0/binary_bios_measurements
    userspace_log: bytes  # /run/log/systemd/tpm2-measure.log (JSON-SEQ), may be empty
    ipe_events: tuple[IpeEvent, ...]  # since the node's previous evidence

    def to_json(self) -> dict[str, Any]:
        return {
            "format": EVIDENCE_FORMAT,
            "quote": _b64(self.quote),
            "signature": _b64(self.signature),
            "pcrs": {
                bank: {str(index): value.hex() for index, value in sorted(values.items())}
                for bank, values in self.pcrs.items()
            },
            "firmware_log": _b64(self.firmware_log),
            "userspace_log": _b64(self.userspace_log),
            "ipe_events": [{"timestamp": e.timestamp, "record": e.record} for e in self.ipe_events],
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _field(document: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in document:
        raise EvidenceError(f"{where}: missing key {key!r}")
    value = document[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise EvidenceError(f"{where}.{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _unb64(document: Mapping[str, Any], key: str) -> bytes:
    text = _field(document, key, str, "evidence")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EvidenceError(f"evidence.{key}: not base64: {exc}") from None


def _check_keys(document: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(document) - allowed)
    if unknown:
        raise EvidenceError(f"{where}: unknown key(s) {', '.join(unknown)}")


def _parse_pcrs(document: Mapping[str, Any]) -> dict[str, dict[int, bytes]]:
    banks = _field(document, "pcrs", dict, "evidence")
    parsed: dict[str, dict[int, bytes]] = {}
    for bank, values in banks.items():
        if bank not in DIGEST_SIZES or not isinstance(values, dict):
            raise EvidenceError(f"evidence.pcrs.{bank}: expected a known bank with an object")
        parsed[bank] = {}
        for index, value in values.items():
            where = f"evidence.pcrs.{bank}.{index}"
            if index not in _PCR_INDICES:
                raise EvidenceError(f"{where}: expected a PCR index 0-23")
            size = DIGEST_SIZES[bank]
            # strip() leaves nothing only if every character is a lowercase hex digit.
            if not isinstance(value, str) or len(value) != 2 * size or value.strip(_LOWER_HEX):
                raise EvidenceError(f"{where}: expected {2 * size} lowercase hex digits")
            parsed[bank][_PCR_INDICES[index]] = bytes.fromhex(value)
    return parsed


def _parse_ipe_events(document: Mapping[str, Any]) -> tuple[IpeEvent, ...]:
    events = []
    for number, item in enumerate(_field(document, "ipe_events", list, "evidence")):
        where = f"evidence.ipe_events[{number}]"
        if not isinstance(item, dict):
            raise EvidenceError(f"{where}: expected an object")
        _check_keys(item, {"timestamp", "record"}, where)
        events.append(
            IpeEvent(_field(item, "timestamp", str, where), _field(item, "record", str, where))
        )
    return tuple(events)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two "quote" members would be read differently by different JSON parsers.
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise EvidenceError(f"key {key!r} appears twice")
        document[key] = value
    return document


def parse_evidence(data: bytes) -> Evidence:
    try:
        document = json.loads(data, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise EvidenceError(f"not JSON: {exc}") from None
    return evidence_from_document(document)


def evidence_from_document(document: object) -> Evidence:
    """Evidence from its JSON document already decoded (a web framework has parsed the request
    body): the same checks as parse_evidence, without serialising it again."""
    if not isinstance(document, dict):
        raise EvidenceError("expected a JSON object")
    _check_keys(
        document,
        {"format", "quote", "signature", "pcrs", "firmware_log", "userspace_log", "ipe_events"},
        "evidence",
    )
    if _field(document, "format", int, "evidence") != EVIDENCE_FORMAT:
        raise EvidenceError(f"evidence.format: expected {EVIDENCE_FORMAT}")
    return Evidence(
        quote=_unb64(document, "quote"),
        signature=_unb64(document, "signature"),
        pcrs=_parse_pcrs(document),
        firmware_log=_unb64(document, "firmware_log"),
        userspace_log=_unb64(document, "userspace_log"),
        ipe_events=_parse_ipe_events(document),
    )
