"""The verifier's conclusions: findings with stable ids and the node state that follows.

Alert rules, dashboards and tests key on a finding's id, never on its message.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class NodeState(enum.StrEnum):
    TRUSTED = "trusted"
    UNTRUSTED = "untrusted"
    STALE = "stale"  # no valid evidence within the check-in interval
    UNKNOWN = "unknown"  # enrolled, never attested


class Severity(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"  # makes the node untrusted
    WARN = "warn"  # reported and alerted, trust unchanged
    SKIP = "skip"  # not checked: what it needs failed (or is not quoted); trust unchanged


class FindingId(enum.StrEnum):
    """Stable ids of the checks the appraisal makes (one finding per id and evidence)."""

    EVIDENCE_FORMAT = "evidence.format"  # evidence bytes parse (quote, signature, logs)
    AK_KNOWN = "ak.known"  # the quoting key is the node's enrolled AK (fails: another key)
    QUOTE_SIGNATURE = "quote.signature"  # the AK's signature covers the quote as sent
    NONCE_FRESH = "nonce.fresh"  # extraData is the challenge (issued, unused, unexpired)
    QUOTE_PCR_DIGEST = "quote.pcr-digest"  # quoted PCR values hash to the quote's pcrDigest
    QUOTE_PCR_SELECTION = "quote.pcr-selection"  # the quote covers the policy's PCRs
    EVENTLOG_REPLAY = "eventlog.replay"  # firmware log replays to the quoted PCRs
    USERSPACE_LOG_REPLAY = "userspace-log.replay"  # systemd's log replays PCR 11 beyond the stub
    PCR4_BOOT_CHAIN = "pcr4.boot-chain"  # PCR 4 holds exactly sd-boot + an accepted UKI
    PCR7_SECURE_BOOT = "pcr7.secure-boot"  # SecureBoot=1 and our PK/KEK/db were measured
    PCR11_REFERENCE = "pcr11.reference"  # PCR 11 equals an accepted release's prediction
    IPE_DENIALS = "ipe.denials"  # no IPE denial since the last evidence


@dataclass(frozen=True)
class Finding:
    id: FindingId
    severity: Severity
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id.value,
            "severity": self.severity.value,
            "message": self.message,
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class Appraisal:
    findings: tuple[Finding, ...]
    release: str | None = None  # "NAME VERSION" of the accepted release the node matched

    @property
    def state(self) -> NodeState:
        failed = any(f.severity is Severity.FAIL for f in self.findings)
        return NodeState.UNTRUSTED if failed else NodeState.TRUSTED

    @property
    def failures(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.FAIL)

    def finding(self, finding_id: FindingId) -> Finding | None:
        return next((f for f in self.findings if f.id is finding_id), None)
