"""Check results and reports: stable ids, severities, text and JSON renderings of the same data."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


class Severity(enum.StrEnum):
    ERROR = "error"  # the chain of trust is broken: verification fails
    WARNING = "warning"  # suspicious but not a broken link
    INFO = "info"


class Status(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"  # could not be checked because an earlier link failed


@dataclass(frozen=True)
class CheckResult:
    """One check. `check_id` is stable across releases; `subject` names the object checked."""

    check_id: str
    status: Status
    severity: Severity
    message: str
    subject: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status is Status.FAIL and self.severity is Severity.ERROR

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.check_id,
            "status": str(self.status),
            "severity": str(self.severity),
            "subject": self.subject,
            "message": self.message,
            "details": dict(self.details),
        }


def passed(check_id: str, message: str, subject: str = "", **details: Any) -> CheckResult:
    return CheckResult(check_id, Status.PASS, Severity.INFO, message, subject, details)


def failed(
    check_id: str,
    message: str,
    subject: str = "",
    *,
    severity: Severity = Severity.ERROR,
    **details: Any,
) -> CheckResult:
    return CheckResult(check_id, Status.FAIL, severity, message, subject, details)


def skipped(check_id: str, message: str, subject: str = "") -> CheckResult:
    """A check that could not run because a link it depends on failed: the verdict fails."""
    return CheckResult(check_id, Status.SKIP, Severity.ERROR, message, subject)


def not_applicable(check_id: str, message: str, subject: str = "") -> CheckResult:
    """A check with nothing to compare against (no node policy given, say): shown, not failed."""
    return CheckResult(check_id, Status.SKIP, Severity.INFO, message, subject)


@dataclass(frozen=True)
class Report:
    subject: str
    results: tuple[CheckResult, ...]

    @classmethod
    def of(cls, subject: str, results: Iterable[CheckResult]) -> Report:
        return cls(subject, tuple(results))

    @property
    def ok(self) -> bool:
        """True only if every error-severity check ran and passed."""
        return all(
            not (r.severity is Severity.ERROR and r.status is not Status.PASS) for r in self.results
        )

    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.status is Status.FAIL)

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "ok": self.ok,
            "results": [r.to_json() for r in self.results],
        }

    def render_json(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=False)

    def render_text(self) -> str:
        marks = {Status.PASS: "ok  ", Status.FAIL: "FAIL", Status.SKIP: "skip"}
        lines = [f"Trust report for {self.subject}"]
        for result in self.results:
            mark = marks[result.status]
            if result.status is Status.FAIL and result.severity is not Severity.ERROR:
                mark = "warn"
            subject = f" [{result.subject}]" if result.subject else ""
            lines.append(f"  {mark}  {result.check_id:<24}{result.message}{subject}")
        verdict = "PASSED" if self.ok else f"FAILED ({len(self.failures())} failing checks)"
        lines.append(f"Verdict: {verdict}")
        return "\n".join(lines)
